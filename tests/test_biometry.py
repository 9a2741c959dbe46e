"""Tests for sscase_monai.biometry: synthetic shapes with known sizes, the sample data's TCD, HC18's circumference."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from skimage.draw import disk, ellipse

from sscase_monai import biometry, io

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO_ROOT / "sample-data"


def drawn_ellipse(semi_rows_mm: float, semi_cols_mm: float, spacing: tuple[float, float], rotation: float = 0.0):
    """A filled ellipse with the given semi-axes in mm, drawn on pixels of ``spacing`` (row_mm, col_mm)."""
    r, c = semi_rows_mm / spacing[0], semi_cols_mm / spacing[1]
    shape = (int(2 * max(r, c) + 20), int(2 * max(r, c) + 20))
    mask = np.zeros(shape, np.uint8)
    rr, cc = ellipse(shape[0] / 2, shape[1] / 2, r, c, shape=shape, rotation=rotation)
    mask[rr, cc] = 1
    return mask


def test_ramanujan_is_exact_for_a_circle_and_close_for_an_ellipse():
    assert biometry.ramanujan_perimeter(10, 10) == pytest.approx(2 * math.pi * 10)
    # a 3:1 ellipse: the exact perimeter (complete elliptic integral) is 13.364893
    assert biometry.ramanujan_perimeter(3, 1) == pytest.approx(13.364893, rel=1e-4)
    with pytest.raises(ValueError, match="-1"):
        biometry.ramanujan_perimeter(-1, 2)


def test_disk_diameter_area_perimeter_and_circumference():
    mask = np.zeros((200, 200), np.uint8)
    rr, cc = disk((100, 100), 60, shape=mask.shape)
    mask[rr, cc] = 1
    spacing = 0.25
    diameter = 2 * 60 * spacing
    assert biometry.max_feret_diameter_mm(mask, spacing) == pytest.approx(diameter, rel=0.015)
    assert biometry.area_mm2(mask, spacing) == pytest.approx(math.pi * (60 * spacing) ** 2, rel=0.01)
    assert biometry.perimeter_mm(mask, spacing) == pytest.approx(math.pi * diameter, rel=0.01)
    assert biometry.ellipse_circumference_mm(mask, spacing) == pytest.approx(math.pi * diameter, rel=0.01)


# skimage draws rotations in pixel space, so the rotated ellipse is on isotropic pixels
@pytest.mark.parametrize(("spacing", "rotation"), [((0.25, 0.4), 0.0), ((0.3, 0.3), 0.7)])
def test_ellipse_diameter_circumference_perimeter_area(spacing, rotation):
    a, b = 20.0, 12.0  # semi-axes in mm (along rows and columns before rotation)
    mask = drawn_ellipse(a, b, spacing, rotation=rotation)
    truth = biometry.ramanujan_perimeter(a, b)
    assert biometry.max_feret_diameter(mask, spacing).length == pytest.approx(2 * a, rel=0.02)
    assert biometry.ellipse_circumference_mm(mask, spacing) == pytest.approx(truth, rel=0.01)
    assert biometry.perimeter_mm(mask, spacing) == pytest.approx(truth, rel=0.02)
    assert biometry.area_mm2(mask, spacing) == pytest.approx(math.pi * a * b, rel=0.01)
    fit = biometry.fit_ellipse(mask, spacing)
    assert (fit.semi_major, fit.semi_minor) == pytest.approx((a, b), rel=0.01)


def test_feret_counts_whole_pixels_and_returns_its_endpoints():
    mask = np.zeros((20, 30), np.uint8)
    mask[5, 3:13] = 1  # a run of 10 pixels in one row
    feret = biometry.max_feret_diameter(mask, (1.0, 2.0))
    assert feret.length == pytest.approx(math.hypot(1.0, 20.0))  # corner to corner: 10 columns x 2 mm, 1 row x 1 mm
    (r0, c0), (r1, c1) = feret.endpoints
    assert {c0, c1} == {2.5, 12.5} and {r0, r1} == {4.5, 5.5}


def test_largest_component_decides_and_empty_masks_measure_zero():
    mask = np.zeros((60, 60), np.uint8)
    mask[5:10, 5:10] = 1  # small speck
    mask[20:50, 20:30] = 1  # the structure: 30 x 10 pixels
    assert biometry.max_feret_diameter_mm(mask, 1.0) == pytest.approx(math.hypot(30, 10))
    assert biometry.count_components(mask) == 2
    measured = biometry.measure_mask(mask, 0.5, {"cerebellum": 1})
    assert measured.labels["cerebellum"].components == 2 and measured.tcd.components == 2
    assert measured.labels["cerebellum"].area == pytest.approx((25 + 300) * 0.25)  # area counts every component
    assert measured.tcd.length == pytest.approx(0.5 * math.hypot(30, 10))
    assert measured.tcd.reliable  # the speck is 8 % of the cerebellum: below the 10 % of a second piece
    empty = np.zeros((10, 10), np.uint8)
    assert biometry.max_feret_diameter_mm(empty, 1.0) == 0.0
    assert biometry.perimeter_mm(empty, 1.0) == 0.0
    assert biometry.ellipse_circumference_mm(empty, 1.0) == 0.0
    assert biometry.fit_ellipse(empty) is None


def test_label_selects_the_structure_in_a_multi_class_mask():
    mask = np.zeros((40, 40), np.uint8)
    mask[5:15, 5:35] = 1
    mask[20:38, 10:14] = 2
    assert biometry.transverse_cerebellar_diameter_mm(mask, 1.0, label=2) == pytest.approx(math.hypot(18, 4))
    assert biometry.area_mm2(mask, 1.0, label=1) == 300
    assert biometry.area_mm2(mask, 1.0) == 300 + 72


@pytest.mark.parametrize("spacing", [0, -1.0, (1.0,), (1.0, float("nan")), "a"])
def test_bad_spacing_is_refused(spacing):
    with pytest.raises(ValueError, match="spacing"):
        biometry.area_mm2(np.ones((3, 3)), spacing)


def test_bad_mask_shape_is_refused():
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        biometry.largest_component(np.zeros((2, 3, 4)))


def test_sample_datas_ground_truth_tcd_is_the_librarys_tcd_of_its_labels():
    """One TCD definition: ``metadata.csv``'s ground truth is the library's TCD of the bundled labels."""
    with (SAMPLE_DATA / "metadata.csv").open() as f:
        rows = [row for row in csv.DictReader(f) if row["labelled"] == "yes"]
    assert len(rows) >= 5
    for row in rows:
        label, geometry = io.read_image(SAMPLE_DATA / row["label"])
        # PNG stores no spacing: metadata.csv has it (isotropic)
        spacing = float(row["pixel_spacing_mm"]) if row["label"].endswith(".png") else geometry.pixel_spacing_hw
        tcd = biometry.transverse_cerebellar_diameter_mm(label, spacing)
        # metadata.csv rounds the spacing to 4 decimals and the TCD to 2
        assert tcd == pytest.approx(float(row["tcd_mm"]), abs=0.006 + tcd * 1e-4), row["file"]


@pytest.mark.data
def test_ellipse_circumference_matches_hc18_reference(shared_data):
    train = shared_data / "hc18" / "train"
    with (train / "pixel_size_and_hc.csv").open() as f:
        rows = list(csv.DictReader(f))[:5]
    for row in rows:
        label, _ = io.read_image(train / "labels" / row["filename"])
        hc = biometry.ellipse_circumference_mm(label, float(row["pixel_size_mm"]))
        assert hc == pytest.approx(float(row["head_circumference_mm"]), rel=0.03), row["filename"]


def physical_ellipse_mask(shape, spacing, centre_mm, semi_mm, angle_deg):
    """A filled ellipse defined in physical (row_mm, col_mm) space, drawn on pixels of ``spacing``: semi-axes
    ``semi_mm = (a, b)``, the major axis at ``angle_deg`` from the I axis (along a row) towards the J axis."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    y, x = rows * spacing[0] - centre_mm[0], cols * spacing[1] - centre_mm[1]
    alpha = math.radians(angle_deg)
    u = (math.sin(alpha), math.cos(alpha))  # major axis, (row, col)
    along, across = y * u[0] + x * u[1], -y * u[1] + x * u[0]
    return ((along / semi_mm[0]) ** 2 + (across / semi_mm[1]) ** 2 <= 1.0).astype(np.uint8)


@pytest.mark.parametrize("spacing", [(0.2, 0.2), (0.15, 0.25)], ids=["isotropic", "anisotropic"])
def test_rotated_ellipse_fit_axes_angle_centre_curve_and_hc(spacing):
    a, b, angle = 30.0, 18.0, 55.0
    centre_mm = (40.0, 45.0)
    mask = physical_ellipse_mask((int(80 / spacing[0]), int(90 / spacing[1])), spacing, centre_mm, (a, b), angle)
    fit = biometry.fit_ellipse(mask, spacing)
    assert (fit.semi_major, fit.semi_minor) == pytest.approx((a, b), rel=0.005)
    assert fit.circumference == pytest.approx(biometry.ramanujan_perimeter(a, b), rel=0.005)
    geometry = io.ImageGeometry(
        size=(mask.shape[1], mask.shape[0]), spacing=spacing[::-1], origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0)
    )
    measured = biometry.measure_biometry(mask, geometry, {"head": 1}, spacing)
    hc = measured["hc"]
    assert hc["label"] == "head" and measured["unit"] == "mm"
    assert hc["circumference_mm"] == pytest.approx(biometry.ramanujan_perimeter(a, b), rel=0.005)
    assert hc["angle_deg"] == pytest.approx(angle, abs=0.3)
    # a 2-D image at the origin: RAS = (-x, -y, 0) with x along columns and y along rows, in mm
    assert hc["centre_ras"] == pytest.approx([-centre_mm[1], -centre_mm[0], 0.0], abs=0.02)
    assert hc["major_axis_ras"][2] == 0.0
    # every curve point lies on the drawn ellipse
    curve = np.array(hc["curve_ras"])
    y, x = -curve[:, 1] - centre_mm[0], -curve[:, 0] - centre_mm[1]
    alpha = math.radians(angle)
    along, across = y * math.sin(alpha) + x * math.cos(alpha), -y * math.cos(alpha) + x * math.sin(alpha)
    np.testing.assert_allclose(np.hypot(along / a, across / b), 1.0, atol=0.006)


def two_lobed(spacing_mm: float, angle_deg: float, shape=(400, 400)):
    """Two hemispheres (transverse semi-axis 8 mm, antero-posterior 5 mm) 6 mm either side of the midline, joined by
    a vermis; transverse axis at ``angle_deg`` from the I axis. Its largest width is 2 x (6 + 8) = 28 mm."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    y, x = (rows - shape[0] / 2) * spacing_mm, (cols - shape[1] / 2) * spacing_mm
    alpha = math.radians(angle_deg)
    t, m = x * math.cos(alpha) + y * math.sin(alpha), -x * math.sin(alpha) + y * math.cos(alpha)
    lobes = (((t - 6) / 8) ** 2 + (m / 5) ** 2 <= 1) | (((t + 6) / 8) ** 2 + (m / 5) ** 2 <= 1)
    vermis = (t / 3) ** 2 + (m / 4) ** 2 <= 1
    return (lobes | vermis).astype(np.uint8), (shape[0] / 2, shape[1] / 2), alpha


@pytest.mark.parametrize("angle", [0.0, 20.0, 90.0])
def test_two_lobed_tcd_is_its_width_with_end_points_on_the_outer_edges(angle):
    spacing = 0.1
    mask, (r0, c0), alpha = two_lobed(spacing, angle)
    feret = biometry.max_feret_diameter(mask, spacing)
    # the pixel squares' outer corners: at most half a pixel diagonal beyond the drawn shape at each end
    assert 28.0 <= feret.length <= 28.0 + math.sqrt(2) * spacing
    assert biometry.transverse_cerebellar_diameter_mm(mask, spacing) == feret.length
    expected = {(r0 + s * 14 / spacing * math.sin(alpha), c0 + s * 14 / spacing * math.cos(alpha)) for s in (-1, 1)}
    for end in feret.endpoints:
        # on the outer edge at the tips (the tip is round, so the exact point may slide along it a little)
        assert min(math.dist(end, e) for e in expected) < 2.5  # pixels: 0.25 mm


def test_index_to_ras_is_itks_physical_point_with_x_and_y_negated():
    geometry = io.ImageGeometry(
        size=(50, 40, 1),
        spacing=(0.3, 0.7, 1.0),
        origin=(-12.0, 30.5, 4.0),
        direction=(0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0),
    )
    image = io.mask_to_image(np.zeros(geometry.shape_hw, np.uint8), geometry)
    points_rc = np.array([[0.0, 0.0], [3.5, 7.25], [39.5, -0.5]])
    for (row, col), ras in zip(points_rc, geometry.index_to_ras(points_rc), strict=True):
        lps = image.TransformContinuousIndexToPhysicalPoint((col, row, 0.0))
        assert ras == pytest.approx([-lps[0], -lps[1], lps[2]])
    png = io.ImageGeometry.identity((40, 50))  # Slicer puts a PNG at the origin with unit pixels
    assert png.index_to_ras([[2.0, 3.0]]).tolist() == [[-3.0, -2.0, 0.0]]


def test_measure_biometry_reports_pixels_not_mm_without_a_spacing():
    mask, _, _ = two_lobed(0.25, 0.0, shape=(200, 200))  # cerebellum = 1
    geometry = io.ImageGeometry.identity(mask.shape)
    measured = biometry.measure_biometry(mask, geometry, {"cerebellum": 1, "head": 2}, None)
    assert measured["unit"] == "px" and measured["spacing_mm"] is None
    assert "no pixel spacing" in measured["spacing_note"]
    assert measured["labels"]["cerebellum"]["area_px2"] == int(mask.sum())
    assert "area_mm2" not in measured["labels"]["cerebellum"]
    assert measured["tcd"]["length_px"] == pytest.approx(28.0 / 0.25, abs=1.5)
    assert "length_mm" not in measured["tcd"]
    assert measured["hc"] is None  # the model has a head label, this mask has no head
    with_spacing = biometry.measure_biometry(mask, geometry, {"cerebellum": 1}, 0.25)
    assert with_spacing["tcd"]["length_mm"] == pytest.approx(measured["tcd"]["length_px"] * 0.25)
    assert "hc" not in with_spacing and "spacing_note" not in with_spacing


def test_find_label_takes_the_first_configured_name_case_insensitively():
    labels = {"pubic_symphysis": 1, "Fetal_Head": 2}
    assert biometry.find_label(labels, biometry.HEAD_LABELS) == ("Fetal_Head", 2)
    assert biometry.find_label(labels, ("skull", "pubic_symphysis")) == ("pubic_symphysis", 1)
    assert biometry.find_label(labels, "cerebellum") is None
    assert biometry.find_label(labels, ()) is None


@pytest.mark.data
def test_hc18_reference_table_and_the_ground_truth_floor(shared_data):
    """The real ``pixel_size_and_hc.csv`` reads as reference HCs, and the ellipse fit on the filled ground-truth
    masks stays within a few mm of them (the floor ``bench/hc18_biometry.py`` reports)."""
    from sscase_monai.evaluation import hc_agreement, read_pixel_size_csv, read_reference_csv

    val = shared_data / "hc18" / "val"
    reference = read_reference_csv(val / "pixel_size_and_hc.csv")
    sizes = read_pixel_size_csv(val / "pixel_size_and_hc.csv")
    assert len(reference) == 87 and reference["002_HC"] == pytest.approx(68.75)
    records = []
    for name in sorted(reference)[:20]:
        label, _ = io.read_image(val / "labels" / f"{name}.png")
        records.append({"name": name, **biometry.biometry_columns(label, sizes[name], {"head": 1}, prefix="label_")})
    summary = hc_agreement(records, reference)
    # the regenerated labels (2026-12-04) are filled to the outline's centre line: their ellipse is the reference's
    assert summary["ground_truth"]["mean_abs_diff_mm"] < 0.3
    assert all(r["label_hc_reliable"] for r in records)  # clean ground truth is not flagged
    assert summary["prediction"]["mean_abs_diff_mm"] is None and summary["missing"] == 20  # no predictions given


def disc_mm(shape, spacing, centre_mm, radius_mm):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (rows * spacing[0] - centre_mm[0]) ** 2 + (cols * spacing[1] - centre_mm[1]) ** 2 <= radius_mm**2


def head_with(defect: str, spacing: tuple[float, float]):
    """A 30 x 22 mm (semi-axes) head ellipse at 30 degrees, clean, with a 9 mm leak blob or bite on its boundary, or
    cut by the image's left edge; and its true HC."""
    a, b, angle, centre = 30.0, 22.0, 30.0, (45.0, 50.0)
    shape = (int(90 / spacing[0]), int(100 / spacing[1]))
    mask = physical_ellipse_mask(shape, spacing, centre, (a, b), angle).astype(bool)
    alpha = math.radians(angle)
    u, v = np.array([math.sin(alpha), math.cos(alpha)]), np.array([-math.cos(alpha), math.sin(alpha)])
    on_boundary = np.array(centre) + a * math.cos(1.0) * u + b * math.sin(1.0) * v
    if defect == "leak":
        mask |= disc_mm(shape, spacing, on_boundary, 9.0)
    elif defect == "bite":
        mask &= ~disc_mm(shape, spacing, on_boundary, 9.0)
    elif defect == "edge":
        mask = mask[:, int(25 / spacing[1]) :]
    return mask.astype(np.uint8), biometry.ramanujan_perimeter(a, b)


SPACINGS = pytest.mark.parametrize("spacing", [(0.2, 0.2), (0.15, 0.25)], ids=["isotropic", "anisotropic"])


@SPACINGS
@pytest.mark.parametrize("defect", ["leak", "bite", "edge"])
def test_robust_hc_is_not_dragged_by_a_leak_a_bite_or_the_image_edge_where_the_moments_are(defect, spacing):
    mask, truth = head_with(defect, spacing)
    robust = biometry.measure_head(mask, spacing)
    assert robust.method == biometry.HC_METHOD == "robust"
    assert robust.circumference == pytest.approx(truth, rel=0.002)  # 0.3 mm of 165 mm
    assert biometry.ellipse_circumference_mm(mask, spacing) == robust.circumference
    moments = biometry.measure_head(mask, spacing, method="moments").circumference
    assert abs(moments / truth - 1) > 0.01  # the old estimator: 1.3 to 3.8 % off
    assert not robust.reliable and robust.reasons


@SPACINGS
def test_a_clean_head_is_reliable_and_every_estimator_agrees(spacing):
    mask, truth = head_with("clean", spacing)
    for method in biometry.HC_METHODS:
        measured = biometry.measure_head(mask, spacing, method=method)
        assert measured.circumference == pytest.approx(truth, rel=0.002), method
        assert measured.reliable and measured.reasons == (), method
    assert biometry.measure_head(mask, spacing).outlier_share == 0.0


def test_the_flags_say_why():
    spacing = (0.2, 0.2)
    leak = biometry.measure_head(head_with("leak", spacing)[0], spacing)
    assert any(r.startswith("boundary departs from the ellipse by") and "(limit 5.0 %)" in r for r in leak.reasons)
    edge = biometry.measure_head(head_with("edge", spacing)[0], spacing)
    assert edge.reasons == (
        "head mask touches the image edge: 15.3 % of the ellipse lies outside the image (limit 0.0 %)",
    )
    mask, _ = head_with("clean", spacing)
    mask[5:100, 5:100] = 1  # a second piece, 17 % of the head's pixels
    pieces = biometry.measure_head(mask, spacing)
    assert pieces.components == 2 and any("head label in 2 pieces" in r for r in pieces.reasons)
    # the limits are one object: loosen one and its reason goes
    loose = biometry.ReliabilityLimits(other_parts_share=0.5)
    assert biometry.measure_head(mask, spacing, limits=loose).reliable


def test_boundary_conventions_half_pixel_contour_matches_pixel_centres_measure_short():
    spacing = (0.2, 0.2)
    mask, truth = head_with("clean", spacing)
    contour = biometry.measure_head(mask, spacing, boundary="contour").circumference
    centres = biometry.measure_head(mask, spacing, boundary="centres").circumference
    assert contour == pytest.approx(truth, abs=0.05)
    assert centres == pytest.approx(truth - math.pi * spacing[0], abs=0.1)  # half a pixel inside all round
    with pytest.raises(ValueError, match="'corners'"):
        biometry.boundary_points(mask.astype(bool), "corners")
    with pytest.raises(ValueError, match="'median'"):
        biometry.fit_head_ellipse(mask, spacing, method="median")


def test_tcd_is_flagged_when_cut_in_two_or_touching_the_edge():
    spacing = 0.1
    mask, _, _ = two_lobed(spacing, 0.0)
    clean = biometry.measure_cerebellum(mask, spacing)
    assert (
        clean.reliable and clean.components == 1 and clean.length == biometry.max_feret_diameter(mask, spacing).length
    )
    split = mask.copy()
    split[:, 195:206] = 0  # the vermis cut out: two hemispheres
    halves = biometry.measure_cerebellum(split, spacing)
    assert not halves.reliable and halves.components == 2
    assert halves.reasons[0].startswith("cerebellum in 2 pieces: the others hold")
    cut = biometry.measure_cerebellum(mask[:, 150:], spacing)
    assert not cut.reliable and cut.reasons == ("cerebellum mask touches the image edge",)
    assert biometry.measure_cerebellum(np.zeros((5, 5)), spacing) is None


def test_measure_biometry_and_the_csv_columns_carry_the_flags():
    spacing = (0.2, 0.2)
    mask, truth = head_with("leak", spacing)
    geometry = io.ImageGeometry.identity(mask.shape)
    measured = biometry.measure_biometry(mask, geometry, {"head": 1}, spacing)
    hc = measured["hc"]
    assert hc["circumference_mm"] == pytest.approx(truth, rel=0.002)
    assert hc["reliable"] is False and hc["reasons"] and hc["checks"]["outlier_share"] > 0.1
    columns = biometry.biometry_columns(mask, spacing, {"head": 1})
    assert list(columns) == ["head_pixels", "head_area_mm2", "hc_mm", "hc_reliable", "hc_reasons"]
    assert columns["hc_mm"] == round(hc["circumference_mm"], 3) and columns["hc_reliable"] is False
    assert columns["hc_reasons"] == "; ".join(hc["reasons"])
    assert columns["head_area_mm2"] == pytest.approx(measured["labels"]["head"]["area_mm2"], abs=1e-3)
    # no spacing: lengths and areas empty, the flag still there; no mask: the same columns, empty
    unknown = biometry.biometry_columns(mask, None, {"head": 1})
    assert unknown["hc_mm"] is None and unknown["head_area_mm2"] is None and unknown["hc_reliable"] is False
    labels = {"cerebellum": 1, "head": 2}
    empty = biometry.biometry_columns(None, spacing, labels, prefix="label_")
    assert list(empty) == list(biometry.biometry_columns(mask, spacing, labels, prefix="label_"))
    assert set(empty.values()) == {None}


def test_the_models_probabilities_bound_the_hc_and_flag_an_uncertain_outline():
    from scipy import ndimage

    spacing = (0.2, 0.2)
    mask, truth = head_with("clean", spacing)
    sharp = biometry.measure_head(mask, spacing, probability=mask.astype(np.float32))
    assert sharp.uncertainty_pct == pytest.approx(0.0, abs=0.05) and sharp.reliable
    assert biometry.measure_head(mask, spacing).uncertainty_pct is None  # no probabilities: no check
    # a blurred outline: the 25 % contour lies well outside the 75 % one
    blurred = ndimage.gaussian_filter(mask.astype(np.float32), 12)
    vague = biometry.measure_head(mask, spacing, probability=blurred)
    assert vague.uncertainty_pct > 3.0 and vague.circumference == sharp.circumference
    strict = biometry.ReliabilityLimits(uncertainty_pct=2.0)
    flagged = biometry.measure_head(mask, spacing, probability=blurred, limits=strict)
    assert not flagged.reliable and "probability contours" in flagged.reasons[0]
    # the app's and the CLI's (C, H, W) probabilities: C = 1 is a binary model's foreground
    probabilities = blurred[None]
    np.testing.assert_array_equal(biometry.class_probability(probabilities, 1), blurred)
    assert biometry.class_probability(None, 1) is None
    with pytest.raises(ValueError, match=r"class 2 .* shape \(1, "):
        biometry.class_probability(probabilities, 2)
    measured = biometry.measure_biometry(
        mask, io.ImageGeometry.identity(mask.shape), {"head": 1}, spacing, probabilities=probabilities
    )
    assert measured["hc"]["checks"]["uncertainty_pct"] == pytest.approx(vague.uncertainty_pct, abs=1e-3)
