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
    measured = biometry.measure_structure(mask, 0.5, label=1)
    assert measured.components == 2
    assert measured.area_mm2 == pytest.approx((25 + 300) * 0.25)  # area counts every component
    assert measured.diameter_mm == pytest.approx(0.5 * math.hypot(30, 10))
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


def test_max_feret_matches_the_sample_datas_tcd():
    """Ground-truth labels of the bundled sample data: max Feret vs the generator's TCD across the midline."""
    with (SAMPLE_DATA / "metadata.csv").open() as f:
        rows = [row for row in csv.DictReader(f) if row["labelled"] == "yes"]
    assert len(rows) >= 5
    for row in rows:
        label, geometry = io.read_image(SAMPLE_DATA / row["label"])
        # PNG stores no spacing: metadata.csv has it (isotropic)
        spacing = float(row["pixel_spacing_mm"]) if row["label"].endswith(".png") else geometry.pixel_spacing_hw
        tcd = biometry.transverse_cerebellar_diameter_mm(label, spacing)
        # max Feret >= the extent across the midline; the cerebellum is widest there, so they differ by < 1.5 mm
        assert tcd == pytest.approx(float(row["tcd_mm"]), abs=1.5), row["file"]
        assert tcd >= float(row["tcd_mm"]) - 0.05, row["file"]


@pytest.mark.data
def test_ellipse_circumference_matches_hc18_reference(shared_data):
    train = shared_data / "hc18" / "train"
    with (train / "pixel_size_and_hc.csv").open() as f:
        rows = list(csv.DictReader(f))[:5]
    for row in rows:
        label, _ = io.read_image(train / "labels" / row["filename"])
        hc = biometry.ellipse_circumference_mm(label, float(row["pixel_size_mm"]))
        assert hc == pytest.approx(float(row["head_circumference_mm"]), rel=0.03), row["filename"]
