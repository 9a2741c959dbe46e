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
(:func:`measure_head`). The mask is cleaned (largest component, holes filled, :func:`clean_mask`), its outer boundary
traced as the half-height contour (:func:`boundary_points`; points along the image's border are left out, so a head
cut by the edge is extrapolated), and an ellipse fitted to it that a leak or a missing bite cannot drag: RANSAC on the
boundary, then least squares on the points within :func:`robust_tolerance` of it (:func:`fit_head_ellipse`,
``"robust"``), in mm (anisotropic pixels scaled before fitting); its perimeter by Ramanujan's approximation.
:class:`EllipseFit` gives its centre, semi-axes, angle and points along it. ``bench/hc18_biometry.py`` compares it
with the second-moment ellipse and a plain least-squares fit on HC18 val (``bench/RESULTS.md``).

**Reliability.** Every HC and TCD says whether it can be trusted (``reliable``, ``reasons``): a head cut by the image
edge, a boundary far from its ellipse, much of it left out by the fit, a mask that differs from its ellipse, a label
in several pieces; a cerebellum cut in two or touching the edge. The limits are :data:`RELIABILITY_LIMITS`.

:func:`measure_mask` is the one path from a mask to measurements (areas, TCD, HC, flags): the app's
:func:`measure_biometry` (a JSON-ready dict with every point in 3D Slicer's RAS coordinates,
:meth:`sscase_monai.io.ImageGeometry.index_to_ras`; :mod:`sscase_monai.markups` turns it into a Slicer markups file)
and the CSV columns of ``predict`` and ``evaluate`` (:func:`biometry_columns`) are made from it.

Spacing is ``(row_mm, col_mm)``, the order of :attr:`sscase_monai.io.ImageGeometry.pixel_spacing_hw`; one number
means isotropic pixels. With a spacing of 1 every length is in pixels.

No gestational-age estimate is made from the TCD: no published fetal TCD-to-age formula whose coefficients could be
checked against a source was found (see ``apps/sscase/README.md``).
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull
from skimage import measure

from sscase_monai.io import UNKNOWN_SPACING_RULE, ImageGeometry, mask_2d, mask_for_image

logger = logging.getLogger(__name__)

SpacingLike = float | Sequence[float]

_CORNERS = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])
"""Offsets from a pixel centre to its four corners, ``(row, col)``."""

_PERIMETER_SMOOTHING = 1.0
"""Gaussian sigma in pixels applied before tracing a boundary for :func:`perimeter_mm`."""

HC_METHODS: tuple[str, ...] = ("moments", "contour", "robust")
"""Ellipse estimators of :func:`fit_head_ellipse`, compared on HC18 val by ``bench/hc18_biometry.py``."""

HC_METHOD = "robust"
"""The estimator every HC of the app, ``predict`` and ``evaluate`` uses (chosen in ``bench/RESULTS.md``, "Head
circumference on HC18")."""

BOUNDARY_CONVENTIONS: tuple[str, ...] = ("contour", "centres")
"""Boundary points of :func:`boundary_points`."""

HC_BOUNDARY = "contour"
"""The boundary the ellipse is fitted to: the half-height contour, which matches HC18's reference ellipses on the
ground-truth masks (``bench/RESULTS.md``; edge-pixel centres lie half a pixel inside and measure short)."""

ROBUST_TOLERANCE_PX = 2.0
ROBUST_TOLERANCE_RELATIVE = 0.04
"""A boundary point counts for the robust fit within max(2 pixels, 4 % of the mean semi-axis) of the ellipse: above
the contour's pixel noise and a model mask's wobble, below a leak or a bite. Chosen on HC18 val (``bench/RESULTS.md``,
"Head circumference on HC18": 2, 3, 4 and 6 % side by side): 4 % gave the fewest model HCs over 5 mm (stage-1
checkpoint 13 of 87, final 256 model 7 of 87) while leaks, bites and edge cuts of the ground truth stay within
0.5 mm."""

UNCERTAINTY_LEVELS: tuple[float, float] = (0.25, 0.75)
"""The probability contours whose HCs bound the HC's uncertainty (:attr:`HeadMeasurement.uncertainty_pct`)."""

RANSAC_POINTS = 240
RANSAC_TRIALS = 200
ROBUST_REFITS = 10
"""The robust fit's RANSAC runs on about this many boundary points with this many 5-point trials (seeded: the same
mask always gives the same HC), then refits on the points near its ellipse at most this many times."""


@dataclass(frozen=True)
class ReliabilityLimits:
    """Where a measurement stops being reliable (``math.inf``: the check is off).

    The defaults (:data:`RELIABILITY_LIMITS`) were chosen on HC18 val by ``bench/hc18_biometry.py``
    (``bench/RESULTS.md``, "Head circumference on HC18", each check swept alone): on a stage-1 checkpoint of the 256
    model they flag 12 of its 13 HCs > 5 mm off and 29 of its 74 good ones, and catch leaks, bites and edge cuts of the
    ground truth with no false flag on it. On the final model they catch only 1 of its 7 misses (all masks too small
    all round, which no shape check sees): see the notes there. The inlier residual flags almost every model mask
    (their outlines are not ellipses) and is off. No head on val is cut by the image edge or comes in pieces: those
    two limits are judgement (any part of the ellipse outside the image; a second piece of 10 %).

    Attributes:
        boundary_residual_pct: RMS distance of the head's boundary to its ellipse, % of the mean semi-axis.
        inlier_residual_pct: the same over the boundary points the robust fit kept.
        outlier_share: share of the head's boundary the robust fit left out (a leak or a bite).
        uncertainty_pct: how much the HC changes between the model's 25 % and 75 % probability contours, % of the
            HC (only with probabilities).
        mismatch_pct: pixels in the mask or in the ellipse (inside the image) but not both, % of the ellipse's.
        outside_share: share of the ellipse's perimeter outside the image (the head cut by the image edge).
        other_parts_share: pixels of a label's other components, as a share of its largest component's.
    """

    boundary_residual_pct: float = 5.0
    inlier_residual_pct: float = math.inf
    outlier_share: float = 0.2
    uncertainty_pct: float = 4.0
    mismatch_pct: float = 6.0
    outside_share: float = 0.0
    other_parts_share: float = 0.1


RELIABILITY_LIMITS = ReliabilityLimits()
"""The limits every reliability flag of the app, ``predict`` and ``evaluate`` uses."""


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
    """An ellipse fitted to a region (:func:`fit_head_ellipse`).

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
    mask = mask_2d(mask)
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

    The ``"moments"`` estimator of :func:`fit_head_ellipse`.

    Returns:
        The fit, or ``None`` for an empty mask.
    """
    return _moments_fit(clean_mask(mask, label), normalize_spacing(spacing))


def _moments_fit(region: np.ndarray, spacing: tuple[float, float]) -> EllipseFit | None:
    """:func:`fit_ellipse` of a mask already cleaned (:func:`clean_mask`)."""
    row_mm, col_mm = spacing
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


def clean_mask(mask: np.ndarray, label: int | None = None) -> np.ndarray:
    """The mask a structure is measured on: its largest 8-connected component with holes filled (boolean)."""
    return ndimage.binary_fill_holes(largest_component(mask, label))


def boundary_points(region: np.ndarray, convention: str = HC_BOUNDARY) -> np.ndarray:
    """Points along the outer boundary of a region, as ``(N, 2)`` pixel coordinates ``(row, col)``.

    Where the region is cut by the image edge, the points along the edge are left out: they are the image's border,
    not the structure's (an ellipse fitted to the rest extends past the image, as the structure does).

    Args:
        region: ``(H, W)`` boolean mask of one component with holes filled (:func:`clean_mask`).
        convention: ``"contour"``: the half-height contour of the mask (``find_contours(mask, 0.5)``: on the edges
            between mask and background pixels, cutting corners); ``"centres"``: the centres of the mask's pixels
            that have a background 4-neighbour (half a pixel inside the contour).

    Raises:
        ValueError: an unknown convention.
    """
    if convention not in BOUNDARY_CONVENTIONS:
        raise ValueError(f"boundary convention must be one of {BOUNDARY_CONVENTIONS}, got {convention!r}")
    region = np.asarray(region, bool)
    height, width = region.shape
    if not region.any():
        return np.zeros((0, 2))
    if convention == "centres":
        inner = ndimage.binary_erosion(region, border_value=1)  # the image border is not a background neighbour
        return np.argwhere(region & ~inner).astype(np.float64)
    contours = measure.find_contours(np.pad(region, 1).astype(np.float32), 0.5)
    points = max(contours, key=len)[:-1] - 1.0  # closed: the last point repeats the first
    inside = (points[:, 0] >= 0) & (points[:, 0] <= height - 1) & (points[:, 1] >= 0) & (points[:, 1] <= width - 1)
    return points[inside]


class _EllipseModel(measure.EllipseModel):
    """scikit-image's ellipse (Halir-Flusser least squares) with a vectorised distance for :func:`measure.ransac`
    (scikit-image's own ``residuals`` solves one optimisation per point)."""

    @classmethod
    def from_estimate(cls, data: np.ndarray) -> _EllipseModel | _FailedFit:
        """The least-squares ellipse, or a falsy :class:`_FailedFit` where scikit-image fails (e.g. it raises a
        ``TypeError`` on points with no real ellipse through them, such as a square's corners)."""
        try:
            with np.errstate(all="ignore"):
                return super().from_estimate(data)
        except (TypeError, ValueError, ZeroDivisionError, np.linalg.LinAlgError) as error:
            return _FailedFit(f"{type(error).__name__}: {error}")

    def residuals(self, data: np.ndarray) -> np.ndarray:
        return np.abs(_signed_distances(self, data))


@dataclass(frozen=True)
class _FailedFit:
    """A failed ellipse estimation: falsy, as :func:`skimage.measure.ransac` expects."""

    reason: str

    def __bool__(self) -> bool:
        return False


def _signed_distances(model: measure.EllipseModel, points: np.ndarray) -> np.ndarray:
    """Distance of each point to the ellipse (outside > 0), to first order: the radial gap to the curve times the
    cosine between the radius and the curve's normal (exact on a circle; within a few % near an ellipse)."""
    a, b = (max(float(v), 1e-12) for v in model.axis_lengths)
    c, s = math.cos(model.theta), math.sin(model.theta)
    d = np.asarray(points, np.float64) - np.asarray(model.center, np.float64)
    u, v = d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c
    r = np.hypot(u, v)
    safe = np.where(r > 0, r, 1.0)
    cos_t, sin_t = np.where(r > 0, u / safe, 1.0), v / safe  # the centre itself: along the first axis
    r_curve = 1.0 / np.sqrt((cos_t / a) ** 2 + (sin_t / b) ** 2)
    nu, nv = r_curve * cos_t / a**2, r_curve * sin_t / b**2  # the normal at the curve's point on that ray
    cosine = (nu * cos_t + nv * sin_t) / np.hypot(nu, nv)
    return (r - r_curve) * cosine


def _least_squares(points_mm: np.ndarray) -> measure.EllipseModel | None:
    if len(points_mm) < 5:
        return None
    model = _EllipseModel.from_estimate(points_mm)
    if not model or not np.all(np.isfinite(model.axis_lengths)) or min(model.axis_lengths) <= 0:
        return None
    return model


def _to_fit(model: measure.EllipseModel, spacing: tuple[float, float]) -> EllipseFit:
    """A model fitted to ``(row_mm, col_mm)`` points as an :class:`EllipseFit`."""
    a, b = (float(v) for v in model.axis_lengths)
    orientation = float(model.theta) if a >= b else float(model.theta) + math.pi / 2
    orientation = (orientation + math.pi / 2) % math.pi - math.pi / 2  # the same axis, in [-pi/2, pi/2)
    centre = np.asarray(model.center, np.float64) / np.array(spacing)
    return EllipseFit(max(a, b), min(a, b), (float(centre[0]), float(centre[1])), orientation, spacing)


def _to_model(fit: EllipseFit) -> measure.EllipseModel:
    centre = np.array(fit.centre) * np.array(fit.spacing)
    return _EllipseModel(centre, np.array([fit.semi_major, fit.semi_minor]), fit.orientation)


def robust_tolerance(fit: EllipseFit, relative: float = ROBUST_TOLERANCE_RELATIVE) -> float:
    """How far (spacing's unit) a boundary point may lie from the ellipse and still count for the robust fit:
    :data:`ROBUST_TOLERANCE_PX` pixels or ``relative`` times the mean semi-axis, whichever is more."""
    pixel = math.sqrt(fit.spacing[0] * fit.spacing[1])
    return max(ROBUST_TOLERANCE_PX * pixel, relative * (fit.semi_major + fit.semi_minor) / 2)


def _robust(
    points_mm: np.ndarray, spacing: tuple[float, float], relative: float
) -> tuple[measure.EllipseModel, np.ndarray] | None:
    """RANSAC on a subsample of the boundary, then least squares on the points near its ellipse until they settle."""
    first = _least_squares(points_mm)
    if first is None:
        return None
    tolerance = robust_tolerance(_to_fit(first, spacing), relative)
    step = max(1, len(points_mm) // RANSAC_POINTS)
    sample = points_mm[::step]
    scale = max(float(np.ptp(points_mm, axis=0).max()), 1e-9)

    def plausible(model: measure.EllipseModel, *_: Any) -> bool:  # no needle or giant from five close points
        a, b = model.axis_lengths
        return bool(np.isfinite([a, b]).all() and min(a, b) > 0 and max(a, b) < 2 * scale)

    model, _ = measure.ransac(
        sample,
        _EllipseModel,
        min_samples=5,
        residual_threshold=tolerance,
        max_trials=RANSAC_TRIALS,
        is_model_valid=plausible,
        rng=0,
    )
    model = model if model else first
    inliers = np.abs(_signed_distances(model, points_mm)) <= tolerance
    for _ in range(ROBUST_REFITS):
        refit = _least_squares(points_mm[inliers])
        if refit is None:
            break
        model = refit
        tolerance = robust_tolerance(_to_fit(model, spacing), relative)
        updated = np.abs(_signed_distances(model, points_mm)) <= tolerance
        if np.array_equal(updated, inliers):
            break
        inliers = updated
    return model, inliers


def fit_head_ellipse(
    mask: np.ndarray,
    spacing: SpacingLike = 1.0,
    label: int | None = None,
    method: str = HC_METHOD,
    boundary: str = HC_BOUNDARY,
    tolerance: float = ROBUST_TOLERANCE_RELATIVE,
) -> tuple[EllipseFit, np.ndarray, np.ndarray] | None:
    """Fit an ellipse to a head mask with one of :data:`HC_METHODS`, in physical units (anisotropic pixels handled).

    Args:
        mask: ``(H, W)`` mask.
        spacing: ``(row_mm, col_mm)`` or one number.
        label: the head's value; ``None``: every non-zero pixel.
        method: ``"moments"`` (:func:`fit_ellipse`), ``"contour"`` (least squares on the boundary points) or
            ``"robust"`` (RANSAC, then least squares on the points within :func:`robust_tolerance`).
        boundary: which boundary points (:func:`boundary_points`).
        tolerance: the robust fit's tolerance relative to the mean semi-axis (:func:`robust_tolerance`).

    Returns:
        ``(fit, points, inliers)``: the ellipse, the boundary points ``(N, 2)`` in pixels and which of them the fit
        kept (all for ``moments`` and ``contour``); ``None`` for an empty mask. A boundary too short to fit (a
        speck) falls back to the moments.

    Raises:
        ValueError: an unknown method or boundary convention.
    """
    return _fit_head_region(clean_mask(mask, label), normalize_spacing(spacing), method, boundary, tolerance)


def _fit_head_region(
    region: np.ndarray, spacing: tuple[float, float], method: str, boundary: str, tolerance: float
) -> tuple[EllipseFit, np.ndarray, np.ndarray] | None:
    """:func:`fit_head_ellipse` of a mask already cleaned (:func:`clean_mask`): each HC cleans its mask once."""
    if method not in HC_METHODS:
        raise ValueError(f"HC method must be one of {HC_METHODS}, got {method!r}")
    if not region.any():
        return None
    points = boundary_points(region, boundary)
    moments = _moments_fit(region, spacing)
    everything = np.ones(len(points), bool)
    if method == "moments":
        return moments, points, everything
    points_mm = points * np.array(spacing)
    if method == "contour":
        model = _least_squares(points_mm)
        return (moments, points, everything) if model is None else (_to_fit(model, spacing), points, everything)
    robust = _robust(points_mm, spacing, tolerance)
    if robust is None:
        return moments, points, everything
    return _to_fit(robust[0], spacing), points, robust[1]


def ellipse_circumference_mm(
    mask: np.ndarray, spacing: SpacingLike, label: int | None = None, method: str = HC_METHOD
) -> float:
    """Circumference of the ellipse fitted to a head mask (:func:`fit_head_ellipse`), in mm (0 for an empty mask).

    The HC18 head circumference: the reference values are perimeters of the annotated ellipses.

    Args:
        mask: ``(H, W)`` mask (e.g. a filled head mask).
        spacing: ``(row_mm, col_mm)`` or one number, in mm.
        label: the value to fit; ``None``: every non-zero pixel.
        method: one of :data:`HC_METHODS`.
    """
    fitted = fit_head_ellipse(mask, spacing, label, method)
    return 0.0 if fitted is None else fitted[0].circumference


CEREBELLUM_LABEL = "cerebellum"
"""Name of the label whose TCD :func:`measure_biometry` reports."""

HEAD_LABELS: tuple[str, ...] = ("head", "fetal_head")
"""Names tried, in order, for the label whose HC :func:`measure_biometry` reports (HC18 ``head``, PSFHS
``fetal_head``); the app's ``--conf head_label`` changes them."""

TCD_DEFINITION = (
    "maximum Feret diameter of the largest cerebellum component: its largest width, end points on the outer pixel "
    "edges (sscase_monai.biometry)"
)
HC_DEFINITION = (
    "perimeter (Ramanujan) of the ellipse fitted to the head mask's boundary, leaks and bites left out "
    "(sscase_monai.biometry)"
)


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


@dataclass(frozen=True)
class HeadMeasurement:
    """The HC of a head mask, with what says whether it can be trusted.

    Attributes:
        fit: the ellipse (:func:`fit_head_ellipse`); ``fit.circumference`` is the HC.
        method: the estimator (one of :data:`HC_METHODS`).
        boundary_residual_pct: RMS distance of every boundary point to the ellipse, % of the mean semi-axis.
        inlier_residual_pct: the same over the points the fit kept (how elliptic the head's boundary is).
        outlier_share: share of the boundary points the fit left out (0 for ``moments`` and ``contour``).
        mismatch_pct: pixels in the cleaned mask or in the ellipse (inside the image) but not both, % of the
            ellipse's pixels inside the image.
        uncertainty_pct: HC at the model's 25 % probability contour minus HC at its 75 % one, % of the HC
            (:data:`UNCERTAINTY_LEVELS`; ``None`` without probabilities).
        outside_share: share of the ellipse's perimeter outside the image.
        other_parts_share: pixels of the head label outside its largest component, as a share of the largest's.
        components: number of 8-connected components of the head label.
        reliable: no limit of the :class:`ReliabilityLimits` it was assessed with is exceeded.
        reasons: one sentence per exceeded limit.
    """

    fit: EllipseFit
    method: str
    boundary_residual_pct: float
    inlier_residual_pct: float
    outlier_share: float
    mismatch_pct: float
    outside_share: float
    other_parts_share: float
    components: int
    uncertainty_pct: float | None = None
    reliable: bool = True
    reasons: tuple[str, ...] = ()

    @property
    def circumference(self) -> float:
        return self.fit.circumference


@dataclass(frozen=True)
class CerebellumMeasurement:
    """The TCD of a cerebellum mask, with what says whether it can be trusted.

    Attributes:
        feret: the maximum Feret diameter of the largest component (:func:`max_feret_diameter`).
        components: number of 8-connected components of the label.
        other_parts_share: pixels outside the largest component, as a share of the largest's (a cerebellum cut in
            two measures one half).
        touches_edge: the largest component reaches the image's border (its width may go on outside).
        reliable: see :class:`HeadMeasurement`.
        reasons: see :class:`HeadMeasurement`.
    """

    feret: FeretDiameter
    components: int
    other_parts_share: float
    touches_edge: bool
    reliable: bool = True
    reasons: tuple[str, ...] = ()

    @property
    def length(self) -> float:
        return self.feret.length


def _other_parts_share(mask: np.ndarray, label: int | None) -> tuple[int, float]:
    components, count = ndimage.label(_binary(mask, label), structure=np.ones((3, 3), bool))
    if count <= 1:
        return count, 0.0
    sizes = np.bincount(components.ravel())[1:]
    return count, float((sizes.sum() - sizes.max()) / sizes.max())


def _inside_ellipse(fit: EllipseFit, shape: tuple[int, int]) -> np.ndarray:
    rows, cols = np.indices(shape, dtype=np.float64)
    points = np.stack([rows.ravel(), cols.ravel()], axis=1) * np.array(fit.spacing)
    return (_signed_distances(_to_model(fit), points) <= 0).reshape(shape)


def _pct(value: float) -> str:
    return f"{value:.1f} %"


_HEAD_CHECKS: tuple[tuple[str, Callable[[HeadMeasurement, float], str]], ...] = (
    (
        "outside_share",
        lambda m, limit: (
            f"head mask touches the image edge: {_pct(100 * m.outside_share)} of the ellipse lies "
            f"outside the image (limit {_pct(100 * limit)})"
        ),
    ),
    (
        "boundary_residual_pct",
        lambda m, limit: f"boundary departs from the ellipse by {_pct(m.boundary_residual_pct)} (limit {_pct(limit)})",
    ),
    (
        "inlier_residual_pct",
        lambda m, limit: (
            f"the head's boundary is not an ellipse: it departs from it by "
            f"{_pct(m.inlier_residual_pct)} where the fit used it (limit {_pct(limit)})"
        ),
    ),
    (
        "outlier_share",
        lambda m, limit: (
            f"the ellipse fit left out {_pct(100 * m.outlier_share)} of the boundary as a leak or a "
            f"bite (limit {_pct(100 * limit)})"
        ),
    ),
    (
        "uncertainty_pct",
        lambda m, limit: (
            f"the head's outline is uncertain: the HC changes by {_pct(m.uncertainty_pct)} between the "
            f"model's {round(100 * UNCERTAINTY_LEVELS[0])} % and {round(100 * UNCERTAINTY_LEVELS[1])} % probability "
            f"contours (limit {_pct(limit)})"
        ),
    ),
    (
        "mismatch_pct",
        lambda m, limit: (
            f"mask and ellipse differ by {_pct(m.mismatch_pct)} of the ellipse's area (limit {_pct(limit)})"
        ),
    ),
    (
        "other_parts_share",
        lambda m, limit: (
            f"head label in {m.components} pieces: the others hold {_pct(100 * m.other_parts_share)} "
            f"of the largest's pixels (limit {_pct(100 * limit)})"
        ),
    ),
)
"""Each check of :func:`assess_head`: the :class:`HeadMeasurement` field compared with the :class:`ReliabilityLimits`
field of the same name, and the reason given when it is exceeded. A new check: a field in both and an entry here."""


def assess_head(measurement: HeadMeasurement, limits: ReliabilityLimits = RELIABILITY_LIMITS) -> HeadMeasurement:
    """``measurement`` with ``reliable`` and ``reasons`` set from ``limits`` (each exceeded limit is a reason)."""
    reasons = []
    for name, reason in _HEAD_CHECKS:
        value, limit = getattr(measurement, name), getattr(limits, name)
        if value is not None and value > limit:
            reasons.append(reason(measurement, limit))
    return replace(measurement, reliable=not reasons, reasons=tuple(reasons))


def assess_cerebellum(
    measurement: CerebellumMeasurement, limits: ReliabilityLimits = RELIABILITY_LIMITS
) -> CerebellumMeasurement:
    """``measurement`` with ``reliable`` and ``reasons`` set from ``limits``."""
    m, reasons = measurement, []
    if m.touches_edge:
        reasons.append("cerebellum mask touches the image edge")
    if m.other_parts_share > limits.other_parts_share:
        reasons.append(
            f"cerebellum in {m.components} pieces: the others hold {_pct(100 * m.other_parts_share)} of the "
            f"largest's pixels (limit {_pct(100 * limits.other_parts_share)})"
        )
    return replace(m, reliable=not reasons, reasons=tuple(reasons))


def measure_head(
    mask: np.ndarray,
    spacing: SpacingLike = 1.0,
    label: int | None = None,
    method: str = HC_METHOD,
    boundary: str = HC_BOUNDARY,
    limits: ReliabilityLimits = RELIABILITY_LIMITS,
    probability: np.ndarray | None = None,
    tolerance: float = ROBUST_TOLERANCE_RELATIVE,
) -> HeadMeasurement | None:
    """The HC of a head mask (:func:`fit_head_ellipse`) and its reliability (:func:`assess_head`).

    Args:
        mask: ``(H, W)`` mask.
        spacing: ``(row_mm, col_mm)`` or one number (mm; 1: pixels).
        label: the head's value; ``None``: every non-zero pixel.
        method: one of :data:`HC_METHODS`.
        boundary: one of :data:`BOUNDARY_CONVENTIONS`.
        limits: where a measurement stops being reliable.
        probability: ``(H, W)`` the model's probability of the head, for :attr:`HeadMeasurement.uncertainty_pct`.
        tolerance: the robust fit's relative tolerance (:func:`robust_tolerance`).

    Returns:
        The measurement, or ``None`` for a mask without the head.
    """
    fitted = fit_head_ellipse(mask, spacing, label, method, boundary, tolerance)
    if fitted is None:
        return None
    fit, points, inliers = fitted
    region = clean_mask(mask, label)
    shape = region.shape
    mean_semi_axis = (fit.semi_major + fit.semi_minor) / 2
    distances = _signed_distances(_to_model(fit), points * np.array(fit.spacing)) if len(points) else np.zeros(1)
    ellipse = _inside_ellipse(fit, shape)
    curve = fit.boundary(360)
    outside = (curve < -0.5) | (curve > np.array(shape) - 0.5)
    components, other_parts = _other_parts_share(mask, label)
    measurement = HeadMeasurement(
        fit=fit,
        method=method,
        boundary_residual_pct=float(100 * np.sqrt(np.mean(distances**2)) / max(mean_semi_axis, 1e-12)),
        inlier_residual_pct=float(100 * np.sqrt(np.mean(distances[inliers] ** 2)) / max(mean_semi_axis, 1e-12))
        if inliers.any()
        else 0.0,
        outlier_share=float(1 - inliers.mean()) if len(inliers) else 0.0,
        mismatch_pct=float(100 * (region ^ ellipse).sum() / max(int(ellipse.sum()), 1)),
        outside_share=float(outside.any(axis=1).mean()),
        other_parts_share=other_parts,
        components=components,
        uncertainty_pct=None
        if probability is None
        else _uncertainty_pct(probability, fit, method, boundary, tolerance),
    )
    return assess_head(measurement, limits)


def _uncertainty_pct(probability: np.ndarray, fit: EllipseFit, method: str, boundary: str, tolerance: float) -> float:
    probability = np.asarray(probability)
    if probability.shape != _binary(probability, None).shape:
        raise ValueError(f"expected an (H, W) probability map, got shape {probability.shape}")
    hcs = []
    for level in UNCERTAINTY_LEVELS:
        level_mask = (probability >= level).astype(np.uint8)
        fitted = fit_head_ellipse(level_mask, fit.spacing, None, method, boundary, tolerance)
        hcs.append(0.0 if fitted is None else fitted[0].circumference)
    return float(100 * (hcs[0] - hcs[1]) / max(fit.circumference, 1e-12))


def class_probability(probabilities: np.ndarray | None, value: int) -> np.ndarray | None:
    """The ``(H, W)`` probability of class ``value`` from a prediction's ``(C, H, W)`` probabilities (``C = 1``:
    a binary model's foreground); ``None`` stays ``None``.

    Raises:
        ValueError: no such class in ``probabilities``.
    """
    if probabilities is None:
        return None
    probabilities = np.asarray(probabilities)
    index = 0 if probabilities.shape[0] == 1 and value == 1 else value
    if probabilities.ndim != 3 or index >= probabilities.shape[0]:
        raise ValueError(f"no probability of class {value} in probabilities of shape {probabilities.shape}")
    return probabilities[index]


def measure_cerebellum(
    mask: np.ndarray,
    spacing: SpacingLike = 1.0,
    label: int | None = None,
    limits: ReliabilityLimits = RELIABILITY_LIMITS,
) -> CerebellumMeasurement | None:
    """The TCD of a cerebellum mask (:func:`max_feret_diameter`) and its reliability (:func:`assess_cerebellum`).

    Returns:
        The measurement, or ``None`` for a mask without the cerebellum.
    """
    region = largest_component(mask, label)
    if not region.any():
        return None
    components, other_parts = _other_parts_share(mask, label)
    touches = bool(region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any())
    measurement = CerebellumMeasurement(max_feret_diameter(mask, spacing, label), components, other_parts, touches)
    return assess_cerebellum(measurement, limits)


@dataclass(frozen=True)
class LabelArea:
    """Pixels, area (spacing's unit squared) and component count of one label in a mask."""

    value: int
    pixels: int
    area: float
    components: int


@dataclass(frozen=True)
class MaskMeasurements:
    """Every measurement of one mask: the one path from a mask to numbers for the app, ``predict`` and ``evaluate``.

    Attributes:
        unit: ``"mm"`` with a spacing, else ``"px"`` (lengths in pixels).
        spacing: ``(row_mm, col_mm)``, or ``None`` when unknown.
        labels: per label name its :class:`LabelArea`.
        tcd_label: the model's cerebellum label (``None``: the model has none).
        tcd: the TCD (``None``: no cerebellum label, or none in this mask).
        hc_label: the model's head label (``None``: the model has none).
        hc: the HC (``None``: no head label, or no head in this mask).
    """

    unit: str
    spacing: tuple[float, float] | None
    labels: dict[str, LabelArea]
    tcd_label: tuple[str, int] | None
    tcd: CerebellumMeasurement | None
    hc_label: tuple[str, int] | None
    hc: HeadMeasurement | None


def measure_mask(
    mask: np.ndarray,
    spacing: SpacingLike | None,
    labels: Mapping[str, int],
    cerebellum: str | Sequence[str] | None = CEREBELLUM_LABEL,
    head: str | Sequence[str] | None = HEAD_LABELS,
    limits: ReliabilityLimits = RELIABILITY_LIMITS,
    probabilities: np.ndarray | None = None,
) -> MaskMeasurements:
    """Area of every label, TCD of the cerebellum and HC of the head of one mask, each flagged when unreliable.

    Args:
        mask: ``(H, W)`` (or ``(1, H, W)``) class indices.
        spacing: ``(row_mm, col_mm)`` or one number in mm; ``None``: unknown (lengths in pixels).
        labels: the model's ``{name: value}``.
        cerebellum: label name(s) to report a TCD for (``None``: none).
        head: label name(s) to report an HC for, first match wins (``None``: none).
        limits: where a measurement stops being reliable.
        probabilities: the prediction's ``(C, H, W)`` class probabilities (:func:`class_probability`), when known:
            adds the HC's uncertainty check.
    """
    mask = mask_2d(mask)
    known = spacing is not None
    grid = normalize_spacing(spacing) if known else (1.0, 1.0)
    areas = {
        name: LabelArea(
            int(value),
            int((mask == value).sum()),
            area_mm2(mask, grid, int(value)),
            count_components(mask, int(value)),
        )
        for name, value in labels.items()
    }
    tcd_label = find_label(labels, cerebellum)
    hc_label = find_label(labels, head)
    return MaskMeasurements(
        unit="mm" if known else "px",
        spacing=grid if known else None,
        labels=areas,
        tcd_label=tcd_label,
        tcd=None if tcd_label is None else measure_cerebellum(mask, grid, tcd_label[1], limits),
        hc_label=hc_label,
        hc=None
        if hc_label is None
        else measure_head(
            mask, grid, hc_label[1], limits=limits, probability=class_probability(probabilities, hc_label[1])
        ),
    )


def measurement_columns(measured: MaskMeasurements, prefix: str = "") -> dict[str, Any]:
    """The CSV columns of ``predict`` and ``evaluate`` for one mask's measurements.

    Per label ``<name>_pixels`` and ``<name>_area_mm2``; with a cerebellum label ``tcd_mm``, ``tcd_reliable`` and
    ``tcd_reasons``; with a head label ``hc_mm``, ``hc_reliable`` and ``hc_reasons`` (reasons joined by ``"; "``).
    Values in mm are ``None`` without a spacing (the flags are still given); every key starts with ``prefix``.
    """
    mm = measured.unit == "mm"
    columns: dict[str, Any] = {}
    for name, area in measured.labels.items():
        columns[f"{prefix}{name}_pixels"] = area.pixels
        columns[f"{prefix}{name}_area_mm2"] = round(area.area, 3) if mm else None
    for key, label, value in (
        ("tcd", measured.tcd_label, measured.tcd),
        ("hc", measured.hc_label, measured.hc),
    ):
        if label is None:
            continue
        length = None if value is None else (value.length if key == "tcd" else value.circumference)
        columns[f"{prefix}{key}_mm"] = round(length, 3) if mm and length is not None else None
        columns[f"{prefix}{key}_reliable"] = None if value is None else value.reliable
        columns[f"{prefix}{key}_reasons"] = None if value is None else "; ".join(value.reasons)
    return columns


def biometry_columns(
    mask: np.ndarray | None,
    spacing: SpacingLike | None,
    labels: Mapping[str, int],
    head_labels: str | Sequence[str] | None = HEAD_LABELS,
    prefix: str = "",
    probabilities: np.ndarray | None = None,
) -> dict[str, Any]:
    """:func:`measurement_columns` of :func:`measure_mask`; for ``mask=None`` (an image that could not be
    segmented) the same columns, empty."""
    if mask is None:
        empty = measurement_columns(measure_mask(np.zeros((1, 1), np.uint8), None, labels, head=head_labels), prefix)
        return dict.fromkeys(empty)
    measured = measure_mask(mask, spacing, labels, head=head_labels, probabilities=probabilities)
    return measurement_columns(measured, prefix)


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
    probabilities: np.ndarray | None = None,
) -> dict[str, Any]:
    """:func:`measure_mask` of one mask as a JSON-ready dict, with every point in the image's RAS coordinates.

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
        probabilities: the prediction's ``(C, H, W)`` class probabilities, when known (adds the HC's uncertainty
            check, see :func:`measure_mask`).

    Returns:
        ``unit``, ``spacing_mm`` (``[row, col]`` or ``None``), ``spacing_note`` (without a spacing),
        ``coordinate_system`` (``"RAS"``), ``labels`` (per name: ``value``, ``pixels``, area, ``components``),
        and ``tcd`` / ``hc`` when the model has such a label (``None`` when it is absent from this mask):
        ``tcd``: ``label``, length, ``endpoints_ras``, ``endpoints_ijk``, ``reliable``, ``reasons``,
        ``definition``; ``hc``: ``label``, circumference, semi-axes, ``angle_deg`` (from the image's I axis, along
        a row, towards its J axis), ``centre_ras``, ``major_axis_ras`` (unit vector), ``curve_ras``, ``reliable``,
        ``reasons``, ``checks`` (the figures the flag is made of), ``definition``.
    """
    mask = mask_for_image(mask, geometry)
    measured = measure_mask(mask, spacing, labels, cerebellum, head, probabilities=probabilities)
    unit = measured.unit
    row_mm, col_mm = measured.spacing or (1.0, 1.0)
    result: dict[str, Any] = {"unit": unit, "spacing_mm": [row_mm, col_mm] if measured.spacing else None}
    if measured.spacing is None:
        result["spacing_note"] = (
            f"no pixel spacing known ({UNKNOWN_SPACING_RULE}): lengths and areas are in pixels, not mm"
        )
    result["coordinate_system"] = "RAS"
    result["labels"] = {
        name: {
            "value": area.value,
            "pixels": area.pixels,
            f"area_{unit}2": round(area.area, 4),
            "components": area.components,
        }
        for name, area in measured.labels.items()
    }
    if measured.tcd_label is not None:
        tcd = measured.tcd
        result["tcd"] = None
        if tcd is not None:
            ends = np.array(tcd.feret.endpoints)
            result["tcd"] = {
                "label": measured.tcd_label[0],
                f"length_{unit}": round(tcd.length, 4),
                "endpoints_ras": _rounded(geometry.index_to_ras(ends)),
                "endpoints_ijk": _rounded(ends[:, ::-1]),
                "reliable": tcd.reliable,
                "reasons": list(tcd.reasons),
                "definition": TCD_DEFINITION,
            }
    if measured.hc_label is not None:
        hc = measured.hc
        result["hc"] = None
        if hc is not None:
            fit = hc.fit
            centre = np.array([fit.centre])
            u_row, u_col = fit.major_axis
            axis_end = centre + np.array([[u_row / row_mm, u_col / col_mm]])
            centre_ras = geometry.index_to_ras(centre)[0]
            direction = geometry.index_to_ras(axis_end)[0] - centre_ras
            result["hc"] = {
                "label": measured.hc_label[0],
                f"circumference_{unit}": round(fit.circumference, 4),
                f"semi_major_{unit}": round(fit.semi_major, 4),
                f"semi_minor_{unit}": round(fit.semi_minor, 4),
                "angle_deg": round(math.degrees(math.atan2(u_row, u_col)) % 180.0, 3),
                "centre_ras": _rounded(centre_ras[None])[0],
                "major_axis_ras": _rounded((direction / np.linalg.norm(direction))[None], 6)[0],
                "curve_ras": _rounded(geometry.index_to_ras(fit.boundary(curve_points))),
                "reliable": hc.reliable,
                "reasons": list(hc.reasons),
                "checks": {
                    "boundary_residual_pct": round(hc.boundary_residual_pct, 3),
                    "inlier_residual_pct": round(hc.inlier_residual_pct, 3),
                    "outlier_share": round(hc.outlier_share, 4),
                    "mismatch_pct": round(hc.mismatch_pct, 3),
                    "outside_share": round(hc.outside_share, 4),
                    "other_parts_share": round(hc.other_parts_share, 4),
                    "uncertainty_pct": None if hc.uncertainty_pct is None else round(hc.uncertainty_pct, 3),
                },
                "definition": HC_DEFINITION,
            }
    return result


UNRELIABLE_SUFFIX = " (unreliable)"
"""Added to a flagged measurement's text (Slicer's markups names, Submit Label's answer)."""


def format_measurements(measured: Mapping[str, Any], digits: int = 1) -> dict[str, str]:
    """The values of a :func:`measure_biometry` result as short texts, e.g. ``{"HC": "172.3 mm (unreliable)"}``.

    The one way a measurement is written for a person: Slicer's markups names (``TCD 31.4 mm``) and the answer to
    Submit Label. TCD and HC first (when measured), with :data:`UNRELIABLE_SUFFIX` when flagged, then the area of
    every label present. A value in pixels says ``px`` (see ``spacing_note``).
    """
    unit = measured.get("unit", "mm")
    texts: dict[str, str] = {}
    for name, key, quantity in (("TCD", "tcd", "length"), ("HC", "hc", "circumference")):
        value = measured.get(key)
        if value:
            flag = "" if value.get("reliable", True) else UNRELIABLE_SUFFIX
            texts[name] = f"{value[f'{quantity}_{unit}']:.{digits}f} {unit}{flag}"
    for name, values in measured.get("labels", {}).items():
        if values.get("pixels"):
            texts[f"{name} area"] = f"{values[f'area_{unit}2']:.{digits}f} {unit}²"
    return texts
