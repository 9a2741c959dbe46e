"""Synthetic trans-cerebellar fetal ultrasound: the project's bundled sample data.

No public fetal cerebellum segmentation set can be shipped, so the sample studies folder is simulated. Each image is
a B-mode scan from a curvilinear probe (a fan-shaped sector, black outside) of a fetal head in the trans-cerebellar
plane: a bright skull ellipse that shadows what lies behind it, brain parenchyma, a cavum septi pellucidi and midline
echo anteriorly, a two-lobed cerebellum (hypoechoic hemispheres with an echogenic rim, joined by the vermis) and the
anechoic cisterna magna behind it, surrounded by amniotic fluid and maternal tissue.

How an image is formed: anatomy is drawn as a map of scatterer amplitude on the pixel grid, resampled onto the
probe's polar (depth x beam angle) grid, multiplied by complex Gaussian scatterers, attenuated along each beam
(strongly by bone: acoustic shadowing), blurred by a point-spread function (short axially, wide laterally, so
speckle widens with depth), given electronic noise, time-gain compensation and log compression, and scan-converted
back to the pixel grid. The label is the cerebellum (hemispheres and vermis) drawn on the same grid, so label and
image agree to the point-spread function.

Sizes follow gestational age (18-31 weeks): biparietal diameter, cephalic index, transverse cerebellar diameter
(TCD, about 17-36 mm) and cisterna magna depth are drawn per image; the pixel spacing is chosen so the head fills
a random share of the field of view.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from sscase_monai.biometry import transverse_cerebellar_diameter_mm
from sscase_monai.io import ImageGeometry, write_mask

logger = logging.getLogger(__name__)

DEFAULT_SIZE: tuple[int, int] = (416, 320)
"""Default image size ``(W, H)`` in pixels (both multiples of 32)."""

GESTATIONAL_AGE_RANGE: tuple[float, float] = (18.0, 31.0)
"""Gestational ages (weeks) the simulated heads are drawn from."""

CASE_PREFIX = "case_"
LABELS_SUBDIR = Path("labels") / "final"
"""Where MONAI Label's local datastore keeps final labels, relative to the studies folder."""

METADATA_FILE = "metadata.csv"
README_FILE = "README.md"
METADATA_COLUMNS: tuple[str, ...] = (
    "file",
    "label",
    "labelled",
    "width",
    "height",
    "pixel_spacing_mm",
    "tcd_mm",
    "gestational_age_weeks",
    "sample_seed",
)

_GENERATED_FILE = re.compile(rf"^{CASE_PREFIX}\d+\.(nii\.gz|png)$")


@dataclass(frozen=True)
class Sector:
    """A curvilinear probe's field of view in pixel coordinates (x right, y down from the top-left pixel centre).

    Attributes:
        apex_x: column of the apex (the centre of the probe's curvature).
        apex_y: row of the apex (negative: above the image).
        r_min: radius of the probe face (the sector's top arc).
        r_max: deepest radius imaged.
        half_angle: half the sector's opening angle, radians.
    """

    apex_x: float
    apex_y: float
    r_min: float
    r_max: float
    half_angle: float

    def polar(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Depth from the apex and beam angle (0 straight down, positive to the right) of points ``(x, y)``."""
        dx, dy = np.asarray(x, float) - self.apex_x, np.asarray(y, float) - self.apex_y
        return np.hypot(dx, dy), np.arctan2(dx, dy)

    def contains(self, x: np.ndarray, y: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Whether points lie inside the sector, at least ``margin`` pixels from its edges."""
        r, theta = self.polar(x, y)
        lateral = r * np.sin(self.half_angle - np.abs(theta))
        return (r >= self.r_min + margin) & (r <= self.r_max - margin) & (lateral >= margin)

    def mask(self, shape_hw: Sequence[int]) -> np.ndarray:
        """Boolean ``(H, W)`` mask of the sector."""
        y, x = np.mgrid[: shape_hw[0], : shape_hw[1]]
        return self.contains(x, y)


@dataclass(frozen=True)
class FetalHead:
    """Where the head and its structures lie, in pixels. Local axes: ``a`` along the midline towards the occiput,
    ``b`` across it (the transverse axis, along which the TCD is measured).

    Attributes:
        centre_x: column of the skull's centre.
        centre_y: row of the skull's centre.
        occiput_angle: direction from the centre to the occiput in image coordinates, radians.
        semi_ofd: half the occipito-frontal diameter (outer skull).
        semi_bpd: half the biparietal diameter (outer skull).
        skull: skull thickness.
        lobe_semi_a: cerebellar hemisphere semi-axis along the midline.
        lobe_semi_b: cerebellar hemisphere semi-axis across it.
        lobe_offset: distance of each hemisphere's centre from the midline.
        lobe_tilt: rotation of each hemisphere (mirrored), radians.
        vermis_semi_a: vermis semi-axis along the midline.
        vermis_semi_b: vermis semi-axis across it.
        cerebellum_a: position of the cerebellum's centre along the midline.
        cisterna_semi_b: half-width of the cisterna magna.
        rim: thickness of the cerebellum's echogenic rim.
    """

    centre_x: float
    centre_y: float
    occiput_angle: float
    semi_ofd: float
    semi_bpd: float
    skull: float
    lobe_semi_a: float
    lobe_semi_b: float
    lobe_offset: float
    lobe_tilt: float
    vermis_semi_a: float
    vermis_semi_b: float
    cerebellum_a: float
    cisterna_semi_b: float
    rim: float

    @property
    def transverse_axis(self) -> tuple[float, float]:
        """Unit vector ``(x, y)`` across the midline: the direction of the TCD."""
        return -math.sin(self.occiput_angle), math.cos(self.occiput_angle)

    def local(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates ``(a, b)`` of image points in the head's frame."""
        dx, dy = np.asarray(x, float) - self.centre_x, np.asarray(y, float) - self.centre_y
        c, s = math.cos(self.occiput_angle), math.sin(self.occiput_angle)
        return dx * c + dy * s, -dx * s + dy * c

    def to_image(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`local`."""
        c, s = math.cos(self.occiput_angle), math.sin(self.occiput_angle)
        return self.centre_x + a * c - b * s, self.centre_y + a * s + b * c

    def cerebellum_parts(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boolean masks ``(hemispheres, vermis)`` at head coordinates ``(a, b)``."""
        a = a - self.cerebellum_a
        hemispheres = np.zeros(np.shape(a), bool)
        for side in (-1.0, 1.0):
            c, s = math.cos(side * self.lobe_tilt), math.sin(side * self.lobe_tilt)
            da, db = a, b - side * self.lobe_offset
            u, v = da * c + db * s, -da * s + db * c
            hemispheres |= (u / self.lobe_semi_a) ** 2 + (v / self.lobe_semi_b) ** 2 <= 1.0
        vermis = (a / self.vermis_semi_a) ** 2 + (b / self.vermis_semi_b) ** 2 <= 1.0
        return hemispheres, vermis

    def inside_skull(self, a: np.ndarray, b: np.ndarray, inner: bool = True, margin: float = 0.0) -> np.ndarray:
        """Whether head coordinates lie inside the skull's inner (or outer) table, ``margin`` pixels in."""
        shrink = (self.skull if inner else 0.0) + margin
        return (a / (self.semi_ofd - shrink)) ** 2 + (b / (self.semi_bpd - shrink)) ** 2 <= 1.0


def generate_sample(
    seed: int,
    size: Sequence[int] = DEFAULT_SIZE,
    spacing: float | None = None,
    gestational_age_weeks: float | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Simulate one trans-cerebellar fetal ultrasound image and its cerebellum label.

    Args:
        seed: seed of everything random in this image; the same arguments give the same arrays.
        size: image size ``(W, H)`` in pixels, ITK order (as ``--size WxH``); each at least 64.
        spacing: isotropic pixel spacing in mm; ``None`` picks one so the head fills 62-80% of the field of view.
        gestational_age_weeks: fixes the age the anatomy is sized for; ``None`` draws one from
            :data:`GESTATIONAL_AGE_RANGE`.

    Returns:
        ``(image, mask, info)``: the ``(H, W)`` uint8 B-mode image (0 outside the sector), the ``(H, W)`` uint8
        cerebellum mask (1 = hemispheres and vermis, 0 = background), and a dict of what was simulated, among
        them ``pixel_spacing_mm``, ``tcd_mm`` (the mask's TCD as the library measures it everywhere:
        :func:`sscase_monai.biometry.transverse_cerebellar_diameter_mm`, its largest width with end points on the
        outer pixel edges), ``tcd_design_mm`` (the width the anatomy was drawn with), ``gestational_age_weeks`` and
        the ``head`` and ``sector`` layouts.

    Raises:
        ValueError: a negative seed, a size under 64 pixels, a non-positive spacing, or a spacing too fine for the
            head to fit.
    """
    width, height = _check_size(size)
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative whole number, got {seed!r}")
    if spacing is not None and not spacing > 0:
        raise ValueError(f"spacing must be a positive number of mm, got {spacing!r}")
    rng = np.random.default_rng(seed)
    sector = _sample_sector(rng, width, height)
    anatomy_mm = _sample_anatomy_mm(rng, gestational_age_weeks)
    head, spacing = _place_head(rng, sector, anatomy_mm, spacing)
    shape = (height, width)
    amplitude, attenuation = _draw_anatomy(rng, head, sector, shape)
    image = _simulate_bmode(rng, amplitude, attenuation, sector, shape)
    y, x = np.mgrid[:height, :width]
    hemispheres, vermis = head.cerebellum_parts(*head.local(x, y))
    mask = (hemispheres | vermis).astype(np.uint8)
    info = {
        "seed": int(seed),
        "size": (width, height),
        "pixel_spacing_mm": spacing,
        "gestational_age_weeks": round(anatomy_mm["ga"], 2),
        "tcd_mm": round(transverse_cerebellar_diameter_mm(mask, spacing), 2),
        "tcd_design_mm": round(anatomy_mm["tcd"], 2),
        "bpd_mm": round(anatomy_mm["bpd"], 2),
        "ofd_mm": round(anatomy_mm["bpd"] / anatomy_mm["cephalic_index"], 2),
        "cisterna_magna_mm": round(anatomy_mm["cisterna"], 2),
        "head": head,
        "sector": sector,
    }
    return image, mask, info


def write_sample_dataset(
    out_dir: str | os.PathLike,
    n: int = 16,
    seed: int = 0,
    labelled_fraction: float = 0.5,
    png: int = 2,
    size: Sequence[int] = DEFAULT_SIZE,
    force: bool = False,
) -> list[dict]:
    """Write a MONAI Label studies folder of synthetic images, part of them with final labels.

    Layout: images ``case_NNN.nii.gz`` (``W x H x 1`` uint8 volumes with the spacing, as Slicer sends them) or
    ``case_NNN.png`` at the top, final labels on the same grid in ``labels/final/case_NNN.<same ext>``,
    ``metadata.csv`` (one row per image) and ``README.md`` (what the folder is and the command that made it).
    Image ``i`` is ``generate_sample(sample_seed, size)`` with ``sample_seed`` from ``(seed, i)``, listed in the
    metadata. Files are byte-identical for the same arguments.

    Args:
        out_dir: the folder; created if missing.
        n: number of images.
        seed: seed of the whole set.
        labelled_fraction: share of images with a final label (rounded to a whole number of images).
        png: how many images are written as 8-bit PNG instead of NIfTI; PNGs are spread over labelled and
            unlabelled images alike.
        size: image size ``(W, H)`` in pixels.
        force: write into a non-empty folder, first deleting what an earlier run wrote there (``case_*`` images
            and labels, ``metadata.csv``, ``README.md``); other files stay.

    Returns:
        One dict per image, the rows of ``metadata.csv``.

    Raises:
        ValueError: a bad argument, or ``out_dir`` is not empty and ``force`` is false.
    """
    width, height = _check_size(size)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative whole number, got {seed!r}")
    if not 0.0 <= labelled_fraction <= 1.0:
        raise ValueError(f"labelled_fraction must be in [0, 1], got {labelled_fraction!r}")
    if not 0 <= png <= n:
        raise ValueError(f"png must be between 0 and n={n}, got {png!r}")
    out_dir = Path(out_dir)
    _prepare_folder(out_dir, force)

    labelled, as_png = _choose_labelled_and_png(seed, n, labelled_fraction, png)
    rows = []
    for index in range(n):
        sample_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        image, mask, info = generate_sample(sample_seed, (width, height))
        ext = ".png" if index in as_png else ".nii.gz"
        name = f"{CASE_PREFIX}{index:03d}{ext}"
        geometry = _geometry(info) if ext == ".nii.gz" else ImageGeometry.identity((height, width))
        # write_mask places any uint8 array on a grid; images are written exactly like their labels.
        write_mask(image, geometry, out_dir / name)
        label = ""
        if index in labelled:
            label = (LABELS_SUBDIR / name).as_posix()
            write_mask(mask, geometry, out_dir / label)
        rows.append(
            {
                "file": name,
                "label": label,
                "labelled": "yes" if label else "no",
                "width": width,
                "height": height,
                "pixel_spacing_mm": f"{info['pixel_spacing_mm']:.4f}",
                "tcd_mm": f"{info['tcd_mm']:.2f}",
                "gestational_age_weeks": f"{info['gestational_age_weeks']:.1f}",
                "sample_seed": sample_seed,
            }
        )
        logger.debug("wrote %s (%s)", name, "labelled" if label else "unlabelled")
    _write_metadata(out_dir / METADATA_FILE, rows)
    (out_dir / README_FILE).write_text(_readme(out_dir, n, seed, labelled_fraction, png, (width, height), rows))
    logger.info("wrote %d images (%d labelled, %d PNG) to %s", n, len(labelled), len(as_png), out_dir)
    return rows


def sample_dataset_command(
    out_dir: str | os.PathLike, n: int, seed: int, labelled_fraction: float, png: int, size: Sequence[int]
) -> str:
    """The ``sscase-monai`` command line that writes this set (run from ``out_dir``'s parent folder)."""
    return (
        f"sscase-monai sample-data --out {Path(out_dir).name} --n {n} --seed {seed} "
        f"--labelled-fraction {labelled_fraction:g} --png {png} --size {size[0]}x{size[1]}"
    )


# --- geometry and anatomy ------------------------------------------------------------------------------------------


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s < 64 for s in size):
        raise ValueError(f"size must be (W, H) with whole numbers of at least 64 pixels, got {tuple(size)!r}")
    return int(size[0]), int(size[1])


def _sample_sector(rng: np.random.Generator, width: int, height: int) -> Sector:
    """A curvilinear sector, apex above the top centre, as wide and deep as the image allows."""
    half_angle = math.radians(rng.uniform(30.0, 37.5))
    r_min = rng.uniform(0.12, 0.2) * height
    apex_y = -r_min + rng.uniform(2.0, 6.0)
    r_max = min(height - 2.0 - apex_y, (width / 2.0 - 3.0) / math.sin(half_angle))
    return Sector(apex_x=(width - 1) / 2.0, apex_y=apex_y, r_min=r_min, r_max=r_max, half_angle=half_angle)


def _sample_anatomy_mm(rng: np.random.Generator, ga: float | None) -> dict[str, float]:
    """Head sizes in mm for a gestational age (biometry charts, rounded; Hadlock BPD, Chavez TCD)."""
    ga = float(rng.uniform(*GESTATIONAL_AGE_RANGE)) if ga is None else float(ga)
    return {
        "ga": ga,
        "bpd": (2.9 * ga - 9.0) * rng.uniform(0.94, 1.06),
        "cephalic_index": rng.uniform(0.74, 0.84),
        "tcd": float(np.clip((1.2 * ga - 4.5) * rng.uniform(0.92, 1.08), 17.0, 36.0)),
        "cisterna": rng.uniform(3.0, 8.0),
        "skull": rng.uniform(1.2, 2.2),
        "rim": rng.uniform(0.7, 1.1),
    }


def _place_head(
    rng: np.random.Generator, sector: Sector, mm: dict[str, float], spacing: float | None
) -> tuple[FetalHead, float]:
    """Scale (when ``spacing`` is None), orient and position the head wholly inside the sector."""
    ofd_mm = mm["bpd"] / mm["cephalic_index"]
    field = min(2 * sector.r_max * math.sin(sector.half_angle), sector.r_max - sector.r_min)
    angle = math.radians(rng.uniform(-25.0, 25.0)) + (math.pi if rng.random() < 0.5 else 0.0)
    for attempt in range(200):
        chosen = spacing
        if spacing is None:  # fill less of the field after each 40 misses
            fill = rng.uniform(0.62, 0.8) * 0.97 ** (attempt // 40)
            chosen = round(ofd_mm / (fill * field), 4)
        head = _head_layout(rng, mm, chosen, angle, sector)
        if head is not None:
            return head, chosen
    raise ValueError(
        f"a head of {ofd_mm:.0f} mm does not fit a sector of {sector.r_max - sector.r_min:.0f} pixels at "
        f"{chosen!r} mm per pixel; use a coarser spacing or a larger size"
    )


def _head_layout(
    rng: np.random.Generator, mm: dict[str, float], spacing: float, angle: float, sector: Sector
) -> FetalHead | None:
    """A head at a random position with sizes ``mm`` at ``spacing``, or None when it would leave the sector."""
    px = {k: v / spacing for k, v in mm.items() if k not in ("ga", "cephalic_index")}
    semi_bpd = px["bpd"] / 2.0
    semi_ofd = semi_bpd / mm["cephalic_index"]
    radius = math.hypot(semi_ofd, semi_bpd)
    r = rng.uniform(sector.r_min, sector.r_max)
    theta = rng.uniform(-sector.half_angle, sector.half_angle) * 0.6
    cx, cy = sector.apex_x + r * math.sin(theta), sector.apex_y + r * math.cos(theta)
    tcd = px["tcd"]
    lobe_semi_b = tcd * rng.uniform(0.25, 0.29)
    head = FetalHead(
        centre_x=cx,
        centre_y=cy,
        occiput_angle=angle,
        semi_ofd=semi_ofd,
        semi_bpd=semi_bpd,
        skull=max(px["skull"], 2.0),
        lobe_semi_a=tcd * rng.uniform(0.2, 0.25),
        lobe_semi_b=lobe_semi_b,
        lobe_offset=tcd / 2.0 - lobe_semi_b,
        lobe_tilt=math.radians(rng.uniform(5.0, 20.0)),
        vermis_semi_a=tcd * rng.uniform(0.15, 0.19),
        vermis_semi_b=tcd * rng.uniform(0.1, 0.14),
        cerebellum_a=0.0,
        cisterna_semi_b=tcd * rng.uniform(0.3, 0.42),
        rim=max(px["rim"], 1.5),
    )
    head = _seat_cerebellum(head, px["cisterna"])
    if head is None:
        return None
    t = np.linspace(0.0, 2 * np.pi, 96, endpoint=False)
    x, y = head.to_image(semi_ofd * np.cos(t), semi_bpd * np.sin(t))
    if not np.all(sector.contains(x, y, margin=0.04 * radius + 4.0)):
        return None
    return head


def _seat_cerebellum(head: FetalHead, cisterna_px: float) -> FetalHead | None:
    """Put the cerebellum ``cisterna_px`` in front of the occipital inner table on the midline, moved forward until
    the hemispheres clear the skull by the rim's width; None when the posterior fossa cannot hold it."""
    inner_a = head.semi_ofd - head.skull
    start = inner_a - cisterna_px - head.vermis_semi_a
    a, b = np.meshgrid(np.linspace(-1.0, 1.0, 61), np.linspace(-1.0, 1.0, 61))
    for step in range(60):
        centre = start - step * 0.02 * head.lobe_semi_a
        moved = replace(head, cerebellum_a=centre)
        extent = 1.1 * (head.lobe_offset + head.lobe_semi_b)
        pa, pb = centre + a * extent, b * extent
        hemispheres, vermis = moved.cerebellum_parts(pa, pb)
        inside = moved.inside_skull(pa, pb, margin=max(head.rim, 0.3 * cisterna_px))
        if np.all(inside[hemispheres | vermis]) and centre > 0.2 * head.semi_ofd:
            return moved
    return None


def _draw_anatomy(
    rng: np.random.Generator, head: FetalHead, sector: Sector, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Scatterer amplitude (1 = full-scale white after compression) and attenuation per pixel (nepers per pixel)."""
    y, x = np.mgrid[: shape[0], : shape[1]].astype(float)
    a, b = head.local(x, y)
    amplitude = _draw_surroundings(rng, head, sector, x, y, a, b)
    attenuation = np.full(shape, 0.004)

    outer = head.inside_skull(a, b, inner=False)
    inner = head.inside_skull(a, b)
    brain = 0.085 * rng.uniform(0.8, 1.2) * np.exp(0.3 * _smooth_noise(rng, shape, 8.0))
    amplitude[inner] = brain[inner]
    # a thin, patchy layer of fluid (extra-axial CSF) lines the inner table
    csf = inner & ~head.inside_skull(a, b, margin=rng.uniform(1.0, 2.5)) & (_smooth_noise(rng, shape, 6.0) > -0.3)
    amplitude[csf] = 0.01
    _draw_forebrain(rng, head, a, b, amplitude, brain)
    _draw_posterior_fossa(rng, head, a, b, amplitude, brain, inner)

    bone = outer & ~inner
    incidence = _skull_incidence(head, sector, x, y, a, b)
    bone_amp = rng.uniform(1.1, 1.8) * (0.25 + 0.75 * incidence**2) * (1.0 + 0.2 * _smooth_noise(rng, shape, 6.0))
    amplitude[bone] = bone_amp[bone]
    attenuation[bone] = rng.uniform(0.1, 0.16) / 2.0 * (head.skull / 4.0) ** -0.5
    attenuation[inner] = 0.005
    return amplitude, attenuation


def _draw_surroundings(
    rng: np.random.Generator, head: FetalHead, sector: Sector, x: np.ndarray, y: np.ndarray, a, b
) -> np.ndarray:
    """Maternal wall bands near the probe, amniotic fluid around the head, uterine tissue beyond."""
    r, _ = sector.polar(x, y)
    depth = (r - sector.r_min) / (sector.r_max - sector.r_min)
    texture = 1.0 + 0.45 * _smooth_noise(rng, x.shape, 5.0)
    tissue = rng.uniform(0.13, 0.22) * texture
    wall_end = rng.uniform(0.08, 0.16)
    bands = sum(
        rng.uniform(0.3, 1.0) * np.exp(-0.5 * ((depth - rng.uniform(0.0, wall_end)) / rng.uniform(0.004, 0.02)) ** 2)
        for _ in range(4)
    )
    wall = (0.18 + 0.8 * bands) * texture
    # fluid around the head: the skull ellipse grown by a wobbly margin
    wobble = 1.0 + 0.12 * _smooth_noise(rng, x.shape, 25.0)
    grow = rng.uniform(1.12, 1.45)
    fluid = (a / (head.semi_ofd * grow)) ** 2 + (b / (head.semi_bpd * grow)) ** 2 <= wobble
    fluid &= depth > wall_end + 0.02
    fluid |= (depth > wall_end + rng.uniform(0.02, 0.1)) & (_smooth_noise(rng, x.shape, 30.0) > rng.uniform(1.3, 2.0))
    amplitude = np.where(depth < wall_end, wall, tissue)
    amplitude[fluid] = 0.002 * texture[fluid]
    return amplitude


def _draw_forebrain(
    rng: np.random.Generator, head: FetalHead, a: np.ndarray, b: np.ndarray, amplitude: np.ndarray, brain
) -> None:
    """Cavum septi pellucidi with midline echo in front and frontal horns beside it, thalami behind it."""
    A, B = head.semi_ofd - head.skull, head.semi_bpd - head.skull  # noqa: N806 (semi-axes)
    csp_a, csp_len, csp_half = -A * rng.uniform(0.38, 0.5), A * rng.uniform(0.14, 0.2), B * rng.uniform(0.05, 0.08)
    line = max(0.6, 0.006 * B)
    midline = (np.abs(b) <= line) & (a < csp_a - csp_len / 2) & head.inside_skull(a, b)
    amplitude[midline] = rng.uniform(0.35, 0.6)
    csp = (np.abs(a - csp_a) <= csp_len / 2) & (np.abs(b) <= csp_half)
    walls = csp & ~((np.abs(a - csp_a) <= csp_len / 2 - 1.0) & (np.abs(b) <= csp_half - 1.2))
    amplitude[csp] = 0.005
    amplitude[walls] = 0.3
    horn_len, horn_half, horn_tilt = A * rng.uniform(0.1, 0.16), B * rng.uniform(0.025, 0.045), rng.uniform(0.2, 0.5)
    for side in (-1.0, 1.0):
        da, db = a - (csp_a - 0.3 * csp_len), b - side * (csp_half + 1.5 * horn_half + 0.04 * B)
        u, v = da * math.cos(horn_tilt) + side * db * math.sin(horn_tilt), -side * da * math.sin(horn_tilt) + db
        horn = (u / horn_len) ** 2 + (v / horn_half) ** 2 <= 1.0
        amplitude[horn] = 0.008
    thal_a, thal_b = A * rng.uniform(-0.05, 0.08), B * rng.uniform(0.13, 0.18)
    for side in (-1.0, 1.0):
        thalamus = ((a - thal_a) / (0.2 * A)) ** 2 + ((b - side * thal_b) / (0.12 * B)) ** 2 <= 1.0
        amplitude[thalamus] = 0.7 * brain[thalamus]
    third_ventricle = (np.abs(b) <= line) & (a > csp_a + csp_len / 2) & (a < thal_a + 0.2 * A)
    amplitude[third_ventricle] = 0.3


def _draw_posterior_fossa(
    rng: np.random.Generator, head: FetalHead, a, b, amplitude: np.ndarray, brain, inner: np.ndarray
) -> None:
    """Cisterna magna behind the cerebellum; hemispheres hypoechoic inside, echogenic at the rim; vermis echogenic."""
    hemispheres, vermis = head.cerebellum_parts(a, b)
    cerebellum = hemispheres | vermis
    cisterna_len = head.semi_ofd - head.skull - head.cerebellum_a
    cisterna = ((a - (head.semi_ofd - head.skull)) / cisterna_len) ** 2 + (b / head.cisterna_semi_b) ** 2 <= 1.0
    cisterna &= inner & ~cerebellum
    amplitude[cisterna] = 0.003
    rim = cerebellum & (ndimage.distance_transform_edt(cerebellum) <= head.rim)
    amplitude[hemispheres] = rng.uniform(0.4, 0.55) * brain[hemispheres]
    amplitude[vermis] = rng.uniform(1.4, 2.0) * brain[vermis]
    amplitude[rim] = rng.uniform(2.5, 3.5) * brain[rim]


def _skull_incidence(head: FetalHead, sector: Sector, x, y, a, b) -> np.ndarray:
    """|cos| of the angle between the beam and the skull's normal: bone facing the probe echoes strongest."""
    c, s = math.cos(head.occiput_angle), math.sin(head.occiput_angle)
    na, nb = a / head.semi_ofd**2, b / head.semi_bpd**2
    nx, ny = na * c - nb * s, na * s + nb * c
    bx, by = x - sector.apex_x, y - sector.apex_y
    return np.abs(nx * bx + ny * by) / (np.hypot(nx, ny) * np.hypot(bx, by) + 1e-12)


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma: float) -> np.ndarray:
    """Gaussian noise smoothed over ``sigma`` pixels, rescaled to unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return noise / (noise.std() + 1e-12)


# --- image formation -----------------------------------------------------------------------------------------------


def _simulate_bmode(
    rng: np.random.Generator, amplitude: np.ndarray, attenuation: np.ndarray, sector: Sector, shape: tuple[int, int]
) -> np.ndarray:
    """Speckle, shadowing, gain and log compression along the probe's beams, scan-converted to the pixel grid."""
    n_depth = int(math.ceil(sector.r_max - sector.r_min)) + 1
    n_beams = int(math.ceil(2 * sector.half_angle * sector.r_max)) + 1
    depth = np.linspace(sector.r_min, sector.r_max, n_depth)
    beams = np.linspace(-sector.half_angle, sector.half_angle, n_beams)
    xs = sector.apex_x + depth[:, None] * np.sin(beams)[None]
    ys = sector.apex_y + depth[:, None] * np.cos(beams)[None]
    coords = np.stack([ys, xs])
    amp = ndimage.map_coordinates(amplitude, coords, order=1, mode="nearest")
    att = ndimage.map_coordinates(attenuation, coords, order=1, mode="nearest")

    dr = depth[1] - depth[0]
    transmitted = np.exp(-2.0 * (np.cumsum(att, axis=0) - att) * dr)  # round trip, up to this sample
    sigma = (rng.uniform(1.1, 1.5), rng.uniform(2.4, 3.4) * n_beams / (2 * sector.half_angle * sector.r_max))
    norm = math.sqrt(4.0 * math.pi * sigma[0] * sigma[1])  # restores unit power after the Gaussian PSF
    # compounding (averaging the power of a few independent looks, as scanners do) tames speckle's deep nulls
    looks = int(rng.integers(2, 4))
    power = np.zeros((n_depth, n_beams))
    for scatterers in rng.standard_normal((looks, 2, n_depth, n_beams)) * math.sqrt(0.5):
        power += sum(
            ndimage.gaussian_filter(part * amp * transmitted, sigma, mode="nearest") ** 2 for part in scatterers
        )
    noise = rng.uniform(0.0004, 0.001) * np.abs(rng.standard_normal((n_depth, n_beams)))
    envelope = np.sqrt(power / looks) * norm + noise

    # time-gain compensation makes up the soft-tissue loss; what is left over is the depth-dependent gain
    relative = (depth - sector.r_min) / (sector.r_max - sector.r_min)
    tgc = np.exp(2.0 * 0.004 * (depth - sector.r_min)) * 10 ** (_residual_gain_db(rng, relative) / 20.0)
    edge = 1.0 - 0.35 * (np.abs(beams) / sector.half_angle) ** 6  # beams at the sector's edges are weaker
    envelope *= tgc[:, None] * edge[None]

    dynamic_range = rng.uniform(42.0, 50.0)
    db = 20.0 * np.log10(envelope * rng.uniform(0.8, 1.25) + 1e-6)
    gray = np.clip((db + dynamic_range) / dynamic_range, 0.0, 1.0) ** rng.uniform(0.9, 1.3)
    polar = np.clip(255.0 * (gray * rng.uniform(0.9, 1.1) + rng.uniform(-0.04, 0.04)), 0.0, 255.0)
    return _scan_convert(polar, sector, depth, beams, shape)


def _residual_gain_db(rng: np.random.Generator, relative_depth: np.ndarray) -> np.ndarray:
    """Gain left after time-gain compensation, in dB: a random smooth curve, usually falling off at depth."""
    near, mid, far = rng.uniform(-2.0, 3.0), rng.uniform(-1.0, 2.0), rng.uniform(-9.0, -1.0)
    return np.interp(relative_depth, [0.0, 0.4, 1.0], [near, mid, far])


def _scan_convert(
    polar: np.ndarray, sector: Sector, depth: np.ndarray, beams: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """Resample a (depth, beam) image onto the pixel grid; black outside the sector."""
    y, x = np.mgrid[: shape[0], : shape[1]]
    r, theta = sector.polar(x, y)
    rows = (r - depth[0]) / (depth[1] - depth[0])
    cols = (theta - beams[0]) / (beams[1] - beams[0])
    image = ndimage.map_coordinates(polar, np.stack([rows, cols]), order=1, mode="constant", cval=0.0)
    image[~sector.contains(x, y)] = 0.0
    return np.round(image).astype(np.uint8)


# --- the studies folder --------------------------------------------------------------------------------------------


def _geometry(info: dict) -> ImageGeometry:
    """A ``W x H x 1`` volume with the sample's spacing, x = 0 on the probe's axis, y = 0 at the top row."""
    width, height = info["size"]
    spacing = info["pixel_spacing_mm"]
    origin_x = round(-(width - 1) / 2.0 * spacing, 4)
    return ImageGeometry(
        size=(width, height, 1),
        spacing=(spacing, spacing, 1.0),
        origin=(origin_x, 0.0, 0.0),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )


def _choose_labelled_and_png(seed: int, n: int, labelled_fraction: float, png: int) -> tuple[set[int], set[int]]:
    """Which images get a label and which are PNG; PNGs alternate between labelled and unlabelled images."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, n, 0x5A3]))
    n_labelled = int(math.floor(n * labelled_fraction + 0.5))
    order = rng.permutation(n)
    labelled = [int(i) for i in order[:n_labelled]]
    unlabelled = [int(i) for i in order[n_labelled:]]
    interleaved = [i for pair in zip(labelled, unlabelled, strict=False) for i in pair]
    longer = labelled if len(labelled) > len(unlabelled) else unlabelled
    interleaved += longer[min(len(labelled), len(unlabelled)) :]
    return set(labelled), set(interleaved[:png])


def _prepare_folder(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise ValueError(f"{out_dir}: the folder is not empty; use --force (force=True) to overwrite it")
        for folder in (out_dir, out_dir / LABELS_SUBDIR):
            for path in folder.glob(f"{CASE_PREFIX}*") if folder.is_dir() else ():
                if path.is_file() and _GENERATED_FILE.match(path.name):
                    path.unlink()
        for name in (METADATA_FILE, README_FILE):
            (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def _write_metadata(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METADATA_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _readme(
    out_dir: Path, n: int, seed: int, labelled_fraction: float, png: int, size: tuple[int, int], rows: list[dict]
) -> str:
    command = sample_dataset_command(out_dir, n, seed, labelled_fraction, png, size)
    n_labelled = sum(row["labelled"] == "yes" for row in rows)
    spacings = [float(row["pixel_spacing_mm"]) for row in rows]
    tcds = [float(row["tcd_mm"]) for row in rows]
    return f"""# Sample data: synthetic trans-cerebellar fetal ultrasound

{n} simulated 2-D ultrasound images ({size[0]}x{size[1]} pixels) of the fetal head in the trans-cerebellar plane, laid
out as a MONAI Label studies folder (local datastore): images here, final labels of {n_labelled} of them in
`labels/final/` under the same name, the other {n - n_labelled} unlabelled (for pseudo-labelling and active learning).
The label is the cerebellum (both hemispheres and the vermis): value 1, background 0, uint8, on exactly the image's
grid (same size, spacing, origin and direction).

**These are not real patient images.** `sscase_monai/sample_data.py` simulates them: a curvilinear probe's sector
(black outside), a skull ellipse with acoustic shadowing, brain with the cavum septi pellucidi and midline echo, a
two-lobed cerebellum with an echogenic rim, the anechoic cisterna magna, speckle and depth-dependent gain. They are
for trying the tools out and for tests; they say nothing about how a model does on real scans.

- `case_NNN.nii.gz`: a `W x H x 1` uint8 volume carrying the pixel spacing (as 3D Slicer sends a 2-D scan); x = 0 on
  the probe's axis, y = 0 at the top row.
- `case_NNN.png`: {png} of the images as 8-bit grayscale PNG, whose labels are PNG too. PNG stores no spacing.
- `metadata.csv`, one row per image:
  - `file`, `label` (path of the final label, or empty), `labelled` (yes/no), `width`, `height`;
  - `pixel_spacing_mm`: isotropic spacing the image was simulated at ({min(spacings):.3f}-{max(spacings):.3f} mm
    here; for a PNG image only this file knows it);
  - `tcd_mm`: the ground-truth transverse cerebellar diameter ({min(tcds):.1f}-{max(tcds):.1f} mm here): the
    cerebellum mask's largest width, end points on the outer pixel edges (its maximum Feret diameter, as
    `sscase_monai.biometry` measures every TCD), times the spacing; given for unlabelled images too;
  - `gestational_age_weeks`: the age the anatomy was sized for;
  - `sample_seed`: `sscase_monai.sample_data.generate_sample(sample_seed, ({size[0]}, {size[1]}))` gives that image
    and its mask again.

## How it was made

From this folder's parent (for the bundled `sample-data/`, the repository root):

    {command}

The same command gives byte-identical files; `tests/test_sample_data.py` checks that the bundled folder still
matches its generator. After changing the generator, regenerate it with the same command plus `--force`.

## Licence

The images, labels and metadata were generated by the sscase-monai project and are dedicated to the public domain
under CC0 1.0 (https://creativecommons.org/publicdomain/zero/1.0/). The generator's code is under the project's
Apache-2.0 licence.
"""
