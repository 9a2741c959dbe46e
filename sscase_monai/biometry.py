"""Biometry from segmentation masks: diameters, areas and perimeters in millimetres, and where to draw them.

**TCD, one definition.** The fetal cerebellum's standard measurement is the transverse cerebellar diameter (TCD): its
largest width across the head's midline, calipers on the outer edges of the two hemispheres. A mask alone does not say
where the midline is, but the cerebellum is much wider across it than along it, so its largest width in any direction
is the transverse one. TCD here (and in the bundled sample data's ``metadata.csv`` ground truth, see
:mod:`sscase_monai.sample_data`) is therefore the **maximum Feret diameter** of the largest connected component: the
longest distance between two points of the component, measured on the convex hull of its pixel squares, so both end
points lie on the outer edges of pixels (a run of ``n`` pixels measures ``n`` spacings, as calipers placed on the
outer edges would). :func:`max_feret_diameter` also returns the two end points, to draw the caliper line.

**HC.** For the HC18 data set, the head circumference is the perimeter of an ellipse fitted to the head mask
(:func:`ellipse_circumference_mm`): the ellipse with the same second moments as the mask (scikit-image's
``regionprops``, with the pixel spacing, so anisotropic pixels are handled), its perimeter by Ramanujan's
approximation. :class:`EllipseFit` gives its centre, semi-axes and angle and points along it.

:func:`measure_biometry` puts it together for one predicted mask on its image's grid: per label the area, TCD for the
cerebellum with its end points and HC for a head, every point in 3D Slicer's RAS coordinates
(:meth:`sscase_monai.io.ImageGeometry.index_to_ras`), as a JSON-ready dict; :mod:`sscase_monai.markups` turns it into
a Slicer markups file.

Spacing is ``(row_mm, col_mm)``, the order of :attr:`sscase_monai.io.ImageGeometry.pixel_spacing_hw`; one number
means isotropic pixels. With a spacing of 1 every length is in pixels.

No gestational-age estimate is made from the TCD: no published fetal TCD-to-age formula whose coefficients could be
checked against a source was found (see ``apps/sscase/README.md``).
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull
from skimage import measure

from sscase_monai.io import ImageGeometry

logger = logging.getLogger(__name__)

SpacingLike = float | Sequence[float]

_CORNERS = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])
"""Offsets from a pixel centre to its four corners, ``(row, col)``."""

_PERIMETER_SMOOTHING = 1.0
"""Gaussian sigma in pixels applied before tracing a boundary for :func:`perimeter_mm`."""


@dataclass(frozen=True)
class FeretDiameter:
    """The longest distance across a region.

    Attributes:
        length: the diameter in the spacing's unit (mm for a spacing in mm; pixels for spacing 1).
        endpoints: its two ends as ``(row, col)`` pixel coordinates (on pixel corners), e.g. to draw it.
    """

    length: float
    endpoints: tuple[tuple[float, float], tuple[float, float]]


@dataclass(frozen=True)
class EllipseFit:
    """The ellipse with a region's second moments.

    Attributes:
        semi_major: semi-axis lengths in the spacing's unit.
        semi_minor: see ``semi_major``.
        centre: ``(row, col)`` in pixels.
        orientation: angle between the row axis and the major axis in radians, in physical (spacing-scaled) space
            (scikit-image's convention: the major axis points along ``(row, col) = (cos, sin)`` of it).
        spacing: ``(row_mm, col_mm)`` the fit was made with.
    """

    semi_major: float
    semi_minor: float
    centre: tuple[float, float]
    orientation: float
    spacing: tuple[float, float] = (1.0, 1.0)

    @property
    def circumference(self) -> float:
        """Perimeter by Ramanujan's approximation, in the spacing's unit."""
        return ramanujan_perimeter(self.semi_major, self.semi_minor)

    @property
    def major_axis(self) -> tuple[float, float]:
        """Unit vector of the major axis in physical ``(row, col)`` space."""
        return math.cos(self.orientation), math.sin(self.orientation)

    def boundary(self, n: int = 72) -> np.ndarray:
        """``n`` points evenly spaced in angle along the ellipse, as ``(N, 2)`` pixel coordinates ``(row, col)``.

        Raises:
            ValueError: ``n`` < 3.
        """
        if n < 3:
            raise ValueError(f"an ellipse needs at least 3 points, got n={n!r}")
        t = np.linspace(0.0, 2.0 * math.pi, int(n), endpoint=False)
        u = np.array(self.major_axis)
        v = np.array([-u[1], u[0]])
        spacing = np.array(self.spacing)
        centre = np.array(self.centre) * spacing
        points = centre + np.outer(self.semi_major * np.cos(t), u) + np.outer(self.semi_minor * np.sin(t), v)
        return points / spacing


@dataclass(frozen=True)
class StructureBiometry:
    """Measurements of one labelled structure (its largest connected component, except ``area_mm2``).

    Attributes:
        diameter_mm: maximum Feret diameter (the TCD for the cerebellum).
        area_mm2: area of all pixels with the label.
        perimeter_mm: length of the largest component's outer boundary.
        components: number of connected components with the label (more than one hints at a noisy prediction).
    """

    diameter_mm: float
    area_mm2: float
    perimeter_mm: float
    components: int


def normalize_spacing(spacing: SpacingLike) -> tuple[float, float]:
    """``0.3`` -> ``(0.3, 0.3)``; ``(row_mm, col_mm)`` checked to be two positive numbers.

    Raises:
        ValueError: not one or two positive finite numbers.
    """
    values = (spacing, spacing) if isinstance(spacing, numbers.Real) else tuple(spacing)
    if len(values) != 2 or not all(isinstance(v, numbers.Real) and math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be a positive number or (row_mm, col_mm), got {spacing!r}")
    return float(values[0]), float(values[1])


def _binary(mask: np.ndarray, label: int | None) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    return mask != 0 if label is None else mask == label


def largest_component(mask: np.ndarray, label: int | None = None) -> np.ndarray:
    """The largest 8-connected component of a mask, as a boolean ``(H, W)`` array (all False when empty).

    Args:
        mask: ``(H, W)`` (or ``(1, H, W)``) mask.
        label: the value to take; ``None``: every non-zero pixel.
    """
    foreground = _binary(mask, label)
    components, count = ndimage.label(foreground, structure=np.ones((3, 3), bool))
    if count <= 1:
        return foreground
    sizes = np.bincount(components.ravel())[1:]
    return components == int(np.argmax(sizes)) + 1


def count_components(mask: np.ndarray, label: int | None = None) -> int:
    """Number of 8-connected components with ``label`` (``None``: non-zero)."""
    return int(ndimage.label(_binary(mask, label), structure=np.ones((3, 3), bool))[1])


def max_feret_diameter(mask: np.ndarray, spacing: SpacingLike = 1.0, label: int | None = None) -> FeretDiameter:
    """Maximum Feret diameter of the largest connected component.

    The longest distance between two corners of the component's pixel squares, found on their convex hull, with
    rows and columns scaled by the spacing (correct for anisotropic pixels).

    Args:
        mask: ``(H, W)`` mask.
        spacing: ``(row_mm, col_mm)`` or one number.
        label: the value to measure; ``None``: every non-zero pixel.

    Returns:
        The diameter (0 with both endpoints at the origin for an empty mask).
    """
    row_mm, col_mm = normalize_spacing(spacing)
    region = largest_component(mask, label)
    if not region.any():
        return FeretDiameter(0.0, ((0.0, 0.0), (0.0, 0.0)))
    # Only pixels with a background 8-neighbour can have a corner on the hull.
    edge = region & ~ndimage.binary_erosion(region, structure=np.ones((3, 3), bool), border_value=0)
    centres = np.argwhere(edge).astype(np.float64)
    corners = np.unique((centres[:, None, :] + _CORNERS[None]).reshape(-1, 2), axis=0)
    physical = corners * np.array([row_mm, col_mm])
    hull = physical[ConvexHull(physical).vertices]
    distances = np.linalg.norm(hull[:, None, :] - hull[None, :, :], axis=-1)
    i, j = np.unravel_index(int(np.argmax(distances)), distances.shape)
    ends = hull[[i, j]] / np.array([row_mm, col_mm])
    return FeretDiameter(float(distances[i, j]), (tuple(ends[0].tolist()), tuple(ends[1].tolist())))


def max_feret_diameter_mm(mask: np.ndarray, spacing: SpacingLike, label: int | None = None) -> float:
    """:func:`max_feret_diameter`'s length alone (mm for a spacing in mm)."""
    return max_feret_diameter(mask, spacing, label).length


def transverse_cerebellar_diameter_mm(mask: np.ndarray, spacing: SpacingLike, label: int = 1) -> float:
    """TCD: the maximum Feret diameter of the largest cerebellum component, in mm (0 when there is none).

    The project's one definition of the TCD (see the module doc); :func:`max_feret_diameter` gives its end points.

    Args:
        mask: ``(H, W)`` label mask.
        spacing: ``(row_mm, col_mm)`` or one number, in mm.
        label: the cerebellum's value in the mask.
    """
    return max_feret_diameter(mask, spacing, label).length


def area_mm2(mask: np.ndarray, spacing: SpacingLike, label: int | None = None) -> float:
    """Area of every pixel with ``label`` (``None``: non-zero) in mm^2."""
    row_mm, col_mm = normalize_spacing(spacing)
    return float(_binary(mask, label).sum()) * row_mm * col_mm


def perimeter_mm(mask: np.ndarray, spacing: SpacingLike, label: int | None = None) -> float:
    """Length of the outer boundary of the largest component (holes filled), in mm.

    The boundary is the half-height contour of the component smoothed with a Gaussian of one pixel: the raw pixel
    staircase would add about 5% to a round shape's perimeter; smoothed, a digital disk or ellipse measures within
    about 1% of its true perimeter (sharp corners are rounded off, about 3% short for a rectangle). Rows and columns
    are scaled by the spacing.
    """
    row_mm, col_mm = normalize_spacing(spacing)
    region = ndimage.binary_fill_holes(largest_component(mask, label))
    if not region.any():
        return 0.0
    padded = np.pad(region, int(math.ceil(4 * _PERIMETER_SMOOTHING))).astype(np.float32)
    contours = measure.find_contours(ndimage.gaussian_filter(padded, _PERIMETER_SMOOTHING), 0.5)
    if not contours:  # a speck or a one-pixel line that smoothing flattens below half height: trace it unsmoothed
        contours = measure.find_contours(padded, 0.5)
    outer = max(contours, key=len)  # holes are filled: the longest contour is the outer boundary
    steps = np.diff(outer, axis=0) * np.array([row_mm, col_mm])
    return float(np.linalg.norm(steps, axis=1).sum())


def ramanujan_perimeter(semi_major: float, semi_minor: float) -> float:
    """Perimeter of an ellipse by Ramanujan's first approximation (exact for a circle; 0.01% off at 5:1)."""
    a, b = float(semi_major), float(semi_minor)
    if a < 0 or b < 0:
        raise ValueError(f"semi-axes must be >= 0, got {(semi_major, semi_minor)!r}")
    return math.pi * (3.0 * (a + b) - math.sqrt((3.0 * a + b) * (a + 3.0 * b)))


def fit_ellipse(mask: np.ndarray, spacing: SpacingLike = 1.0, label: int | None = None) -> EllipseFit | None:
    """The ellipse with the second moments of the largest component (holes filled), axes scaled by the spacing.

    Returns:
        The fit, or ``None`` for an empty mask.
    """
    row_mm, col_mm = normalize_spacing(spacing)
    region = ndimage.binary_fill_holes(largest_component(mask, label))
    if not region.any():
        return None
    props = measure.regionprops(region.astype(np.uint8), spacing=(row_mm, col_mm))[0]
    centre = props.centroid  # in physical units when a spacing is given
    return EllipseFit(
        semi_major=float(props.axis_major_length) / 2.0,
        semi_minor=float(props.axis_minor_length) / 2.0,
        centre=(float(centre[0]) / row_mm, float(centre[1]) / col_mm),
        orientation=float(props.orientation),
        spacing=(row_mm, col_mm),
    )


def ellipse_circumference_mm(mask: np.ndarray, spacing: SpacingLike, label: int | None = None) -> float:
    """Circumference of the ellipse fitted to a mask, in mm (0 for an empty mask).

    The HC18 head circumference: the reference values are perimeters of the annotated ellipses.

    Args:
        mask: ``(H, W)`` mask (e.g. a filled head mask).
        spacing: ``(row_mm, col_mm)`` or one number, in mm.
        label: the value to fit; ``None``: every non-zero pixel.
    """
    fit = fit_ellipse(mask, spacing, label)
    return 0.0 if fit is None else fit.circumference


def measure_structure(mask: np.ndarray, spacing: SpacingLike, label: int | None = None) -> StructureBiometry:
    """Diameter, area, perimeter and component count of one labelled structure.

    Args:
        mask: ``(H, W)`` label mask.
        spacing: ``(row_mm, col_mm)`` or one number, in mm.
        label: the structure's value; ``None``: every non-zero pixel.
    """
    return StructureBiometry(
        diameter_mm=max_feret_diameter(mask, spacing, label).length,
        area_mm2=area_mm2(mask, spacing, label),
        perimeter_mm=perimeter_mm(mask, spacing, label),
        components=count_components(mask, label),
    )


CEREBELLUM_LABEL = "cerebellum"
"""Name of the label whose TCD :func:`measure_biometry` reports."""

HEAD_LABELS: tuple[str, ...] = ("head", "fetal_head")
"""Names tried, in order, for the label whose HC :func:`measure_biometry` reports (HC18 ``head``, PSFHS
``fetal_head``); the app's ``--conf head_label`` changes them."""

TCD_DEFINITION = (
    "maximum Feret diameter of the largest cerebellum component: its largest width, end points on the outer pixel "
    "edges (sscase_monai.biometry)"
)
HC_DEFINITION = "perimeter (Ramanujan) of the ellipse with the head mask's second moments (sscase_monai.biometry)"


def parse_label_names(text: str) -> tuple[str, ...]:
    """``"head,fetal_head"`` -> ``("head", "fetal_head")``; ``"none"`` or empty -> ``()`` (no such label).

    The form of the app's ``--conf head_label`` and the CLI's ``--head-label``.
    """
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    return () if [n.lower() for n in names] == ["none"] else names


def find_label(labels: Mapping[str, int], names: str | Sequence[str] | None) -> tuple[str, int] | None:
    """The first of ``names`` (case-insensitive) that ``labels`` has, as ``(name, value)``; ``None`` if none.

    Args:
        labels: ``{name: mask value}``.
        names: one name, names in order of preference, or ``None``.
    """
    if not names:
        return None
    wanted = [names] if isinstance(names, str) else list(names)
    by_name = {name.strip().lower(): (name, int(value)) for name, value in labels.items()}
    return next((by_name[n.strip().lower()] for n in wanted if n.strip().lower() in by_name), None)


def _rounded(points: np.ndarray, digits: int = 4) -> list[list[float]]:
    return [[round(float(v), digits) for v in point] for point in np.asarray(points)]


def measure_biometry(
    mask: np.ndarray,
    geometry: ImageGeometry,
    labels: Mapping[str, int],
    spacing: SpacingLike | None,
    cerebellum: str | Sequence[str] | None = CEREBELLUM_LABEL,
    head: str | Sequence[str] | None = HEAD_LABELS,
    curve_points: int = 72,
) -> dict[str, Any]:
    """Area of every label, TCD of the cerebellum and HC of the head of one mask, as a JSON-ready dict.

    Lengths are in mm when ``spacing`` is known, else in pixels, and every key says which (``area_mm2`` or
    ``area_px2``, ``length_mm`` or ``length_px``, ...); without a spacing ``spacing_note`` says so. Points are in
    3D Slicer's RAS coordinates of the image (``geometry``: origin, spacing and direction from the file; a PNG is at
    the origin with unit pixels, as Slicer shows it), and as ITK continuous indices ``(i, j)`` = ``(col, row)``.

    Args:
        mask: ``(H, W)`` class indices on the image's grid.
        geometry: the image's geometry (where its pixels are in space).
        labels: ``{name: mask value}`` of the model.
        spacing: ``(row_mm, col_mm)`` or one number when known (from the file or a pixel-size table); ``None``
            for an image without one (PNG/JPEG).
        cerebellum: the label name(s) to report a TCD for (``None``: none).
        head: the label name(s) to report an HC for, first match wins (``None``: none).
        curve_points: points along the HC ellipse in ``hc["curve_ras"]``.

    Returns:
        ``unit``, ``spacing_mm`` (``[row, col]`` or ``None``), ``spacing_note`` (without a spacing),
        ``coordinate_system`` (``"RAS"``), ``labels`` (per name: ``value``, ``pixels``, area, ``components``),
        and ``tcd`` / ``hc`` when the model has such a label (``None`` when it is absent from this mask):
        ``tcd``: ``label``, length, ``endpoints_ras``, ``endpoints_ijk``, ``definition``; ``hc``: ``label``,
        circumference, semi-axes, ``angle_deg`` (from the image's I axis, along a row, towards its J axis),
        ``centre_ras``, ``major_axis_ras`` (unit vector), ``curve_ras``, ``definition``.
    """
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.shape != geometry.shape_hw:
        raise ValueError(f"mask of shape {mask.shape} does not fit an image of shape {geometry.shape_hw}")
    known = spacing is not None
    row_mm, col_mm = normalize_spacing(spacing) if known else (1.0, 1.0)
    unit = "mm" if known else "px"
    result: dict[str, Any] = {"unit": unit, "spacing_mm": [row_mm, col_mm] if known else None}
    if not known:
        result["spacing_note"] = (
            "the image has no pixel spacing (PNG/JPEG carry none): lengths and areas are in pixels, not mm"
        )
    result["coordinate_system"] = "RAS"
    result["labels"] = {
        name: {
            "value": int(value),
            "pixels": int((mask == value).sum()),
            f"area_{unit}2": round(area_mm2(mask, (row_mm, col_mm), int(value)), 4),
            "components": count_components(mask, int(value)),
        }
        for name, value in labels.items()
    }
    found = find_label(labels, cerebellum)
    if found is not None:
        name, value = found
        result["tcd"] = None
        if (mask == value).any():
            feret = max_feret_diameter(mask, (row_mm, col_mm), value)
            ends = np.array(feret.endpoints)
            result["tcd"] = {
                "label": name,
                f"length_{unit}": round(feret.length, 4),
                "endpoints_ras": _rounded(geometry.index_to_ras(ends)),
                "endpoints_ijk": _rounded(ends[:, ::-1]),
                "definition": TCD_DEFINITION,
            }
    found = find_label(labels, head)
    if found is not None:
        name, value = found
        result["hc"] = None
        fit = fit_ellipse(mask, (row_mm, col_mm), value)
        if fit is not None:
            centre = np.array([fit.centre])
            u_row, u_col = fit.major_axis
            axis_end = centre + np.array([[u_row / row_mm, u_col / col_mm]])
            centre_ras = geometry.index_to_ras(centre)[0]
            direction = geometry.index_to_ras(axis_end)[0] - centre_ras
            result["hc"] = {
                "label": name,
                f"circumference_{unit}": round(fit.circumference, 4),
                f"semi_major_{unit}": round(fit.semi_major, 4),
                f"semi_minor_{unit}": round(fit.semi_minor, 4),
                "angle_deg": round(math.degrees(math.atan2(u_row, u_col)) % 180.0, 3),
                "centre_ras": _rounded(centre_ras[None])[0],
                "major_axis_ras": _rounded((direction / np.linalg.norm(direction))[None], 6)[0],
                "curve_ras": _rounded(geometry.index_to_ras(fit.boundary(curve_points))),
                "definition": HC_DEFINITION,
            }
    return result


def format_measurements(measured: Mapping[str, Any], digits: int = 1) -> dict[str, str]:
    """The values of a :func:`measure_biometry` result as short texts with their unit, e.g. ``{"TCD": "31.4 mm"}``.

    What a person reads: Slicer's markups names and the answer to Submit Label. TCD and HC first (when measured),
    then the area of every label present. A value in pixels says ``px`` (see ``spacing_note``).
    """
    unit = measured.get("unit", "mm")
    texts: dict[str, str] = {}
    if measured.get("tcd"):
        texts["TCD"] = f"{measured['tcd'][f'length_{unit}']:.{digits}f} {unit}"
    if measured.get("hc"):
        texts["HC"] = f"{measured['hc'][f'circumference_{unit}']:.{digits}f} {unit}"
    for name, values in measured.get("labels", {}).items():
        if values.get("pixels"):
            texts[f"{name} area"] = f"{values[f'area_{unit}2']:.{digits}f} {unit}²"
    return texts
