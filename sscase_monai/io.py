"""Reading 2-D ultrasound images and writing masks with the image's geometry.

Every reader and writer here goes through ITK (SimpleITK), the same library 3D Slicer uses, so a mask written for an
image lands on exactly the grid Slicer shows for that image: same size, spacing, origin and direction.

Arrays follow numpy's row-major convention: a 2-D image is ``(H, W)`` or ``(H, W, C)``; ITK sizes are ``(W, H)`` or
``(W, H, 1)`` for a single-slice volume (how Slicer saves a 2-D scan as NIfTI or NRRD).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel
import numpy as np
import SimpleITK as sitk

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".dcm", ".dicom")
"""File name endings read as images, longest first where one ends another (``.nii.gz`` before ``.nii``)."""

DEFAULT_MAX_PIXELS = 4096 * 4096
"""Largest image accepted (pixels in one slice): bounds the memory one request can take."""


class ImageReadError(ValueError):
    """An image or label file that cannot be used: unreadable, not a 2-D image, too large, ...

    The library's one refusal type: it carries the HTTP status a server answers it with (``http_status``: 422 for a
    readable request whose file cannot be used, 413 for one over the pixel limit), so no caller picks a status from
    the message text.

    Args:
        reason: what is wrong, naming the file.
        http_status: the status a server answers with.
    """

    def __init__(self, reason: str, http_status: int = 422) -> None:
        super().__init__(reason)
        self.http_status = http_status


UNKNOWN_SPACING_RULE = (
    "a pixel spacing of exactly 1 x 1 with origin 0 and identity direction means no physical spacing is known: it is "
    "what PNG/JPEG files carry, and what 3D Slicer writes when it sends a PNG/JPEG scan as NIfTI"
)
"""The project's one rule for images whose file says nothing about pixel size (README, "Measurements")."""


@dataclass(frozen=True)
class ImageGeometry:
    """Where an image's pixels lie in space, in ITK's (LPS) convention.

    Attributes:
        size: ITK size, ``(W, H)`` or ``(W, H, 1)``.
        spacing: pixel spacing per ITK axis (mm where the file says so, else 1).
        origin: physical position of the first pixel.
        direction: direction cosines, row-major ``dim x dim``.
    """

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @property
    def shape_hw(self) -> tuple[int, int]:
        """The image's ``(H, W)``: the shape a mask for it has."""
        return int(self.size[1]), int(self.size[0])

    @property
    def pixel_spacing_hw(self) -> tuple[float, float]:
        """Spacing along rows and columns ``(row_mm, col_mm)``."""
        return float(self.spacing[1]), float(self.spacing[0])

    @property
    def has_default_placement(self) -> bool:
        """Whether the geometry is what a reader reports for a file with none: spacing exactly 1, origin 0, identity
        direction (a PNG or JPEG; also the NIfTI 3D Slicer saves from one, see :data:`UNKNOWN_SPACING_RULE`)."""
        dim = len(self.size)
        return (
            all(s == 1.0 for s in self.spacing)
            and all(o == 0.0 for o in self.origin)
            and tuple(float(d) for d in self.direction) == tuple(float(d) for d in np.eye(dim).ravel())
        )

    def index_to_lps(self, points_rc: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """Physical positions (ITK's LPS, mm) of continuous pixel coordinates ``(row, col)``.

        A pixel's centre is at whole coordinates, its corners half a pixel off. ITK's rule: ``origin + direction @
        (spacing * index)`` with ``index = (col, row[, 0])``.

        Args:
            points_rc: ``(N, 2)`` pixel coordinates ``(row, col)``.

        Returns:
            ``(N, 3)`` positions ``(L, P, S)``; ``S`` is 0 for a 2-D image (as Slicer places a PNG).
        """
        points = np.asarray(points_rc, np.float64).reshape(-1, 2)
        dim = len(self.size)
        index = np.zeros((len(points), dim))
        index[:, 0], index[:, 1] = points[:, 1], points[:, 0]
        direction = np.asarray(self.direction, np.float64).reshape(dim, dim)
        physical = np.asarray(self.origin, np.float64) + (index * np.asarray(self.spacing)) @ direction.T
        if dim == 2:
            physical = np.concatenate([physical, np.zeros((len(points), 1))], axis=1)
        return physical

    def index_to_ras(self, points_rc: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """Positions of pixel coordinates ``(row, col)`` as 3D Slicer shows them (RAS, mm): :meth:`index_to_lps`
        with the first two axes negated (Slicer's IJK-to-RAS matrix of the image)."""
        return flip_lps_ras(self.index_to_lps(points_rc))

    def to_dict(self) -> dict[str, list]:
        """Plain lists, safe to keep in MONAI metadata and to collate."""
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> ImageGeometry:
        """Inverse of :meth:`to_dict`; accepts tensors or arrays as values (as after collation)."""

        def _tuple(v, cast):
            return tuple(cast(x) for x in np.asarray(v).reshape(-1).tolist())

        return cls(
            size=_tuple(values["size"], int),
            spacing=_tuple(values["spacing"], float),
            origin=_tuple(values["origin"], float),
            direction=_tuple(values["direction"], float),
        )

    @classmethod
    def of(cls, image: sitk.Image) -> ImageGeometry:
        """The geometry of an ITK image."""
        return cls(
            size=tuple(int(s) for s in image.GetSize()),
            spacing=tuple(float(s) for s in image.GetSpacing()),
            origin=tuple(float(s) for s in image.GetOrigin()),
            direction=tuple(float(s) for s in image.GetDirection()),
        )

    @classmethod
    def identity(cls, shape_hw: Sequence[int]) -> ImageGeometry:
        """Unit spacing at the origin: what ITK (and Slicer) give a PNG."""
        h, w = int(shape_hw[0]), int(shape_hw[1])
        return cls(size=(w, h), spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0))


def image_extension(path: str | os.PathLike) -> str:
    """The known image extension of ``path`` in lower case (``.nii.gz`` counts as one), or its last suffix."""
    name = Path(path).name.lower()
    for ext in IMAGE_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return Path(name).suffix


def flip_lps_ras(points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """LPS positions ``(N, 3)`` as RAS, or RAS as LPS: the same flip both ways (the first two axes negated)."""
    return np.asarray(points, np.float64).reshape(-1, 3) * np.array([-1.0, -1.0, 1.0])


def image_stem(path: str | os.PathLike) -> str:
    """The file name without its image extension: ``a.nii.gz`` -> ``a``. Images and labels are matched on this."""
    name = Path(path).name
    ext = image_extension(name)
    return name[: len(name) - len(ext)] if ext and name.lower().endswith(ext) else Path(name).stem


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` has one of the extensions in :data:`IMAGE_EXTENSIONS`."""
    return image_extension(path) in IMAGE_EXTENSIONS


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, ImageGeometry]:
    """Read a 2-D image (PNG, JPEG, NIfTI, NRRD or DICOM) with its geometry.

    Single-slice volumes (``W x H x 1``, how Slicer saves a 2-D scan) count as 2-D.

    Args:
        path: the file.
        max_pixels: refuse images with more pixels than this (memory bound).

    Returns:
        The pixel array, ``(H, W)`` or ``(H, W, C)`` in the file's own dtype, and the geometry.

    Raises:
        ImageReadError: the file is missing, empty, unreadable, not 2-D, too large, or has NaN or infinite pixels.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: the file is empty")
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        size = tuple(reader.GetSize())
        _check_2d(path, size, max_pixels)
        image = reader.Execute()
    except ImageReadError:
        raise
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ImageReadError(f"{path}: not a readable image ({reason[:200]})") from e
    array = sitk.GetArrayFromImage(image)
    if image.GetDimension() == 3:
        array = array[0]
    if np.issubdtype(array.dtype, np.floating):
        _check_finite(path, array)
    geometry = ImageGeometry.of(image)
    logger.debug("read %s: array %s %s, geometry %s", path, array.shape, array.dtype, geometry)
    return array, geometry


def _check_2d(path: Path, size: Sequence[int], max_pixels: int) -> None:
    if len(size) == 3 and size[2] != 1:
        raise ImageReadError(
            f"{path}: a 3-D volume of size {tuple(size)} ({size[2]} slices); sscase-monai segments 2-D images "
            "(one slice)"
        )
    if len(size) not in (2, 3):
        raise ImageReadError(f"{path}: {len(size)}-D image of size {tuple(size)}; expected a 2-D image")
    w, h = int(size[0]), int(size[1])
    if w < 2 or h < 2:
        raise ImageReadError(f"{path}: image of {w}x{h} pixels is too small to segment")
    if w * h > max_pixels:
        raise ImageReadError(f"{path}: image of {w}x{h} pixels exceeds the limit of {max_pixels} pixels", 413)


def _check_finite(path: Path, array: np.ndarray) -> None:
    """Refuse NaN and infinite pixels: a network cannot use them and they are no intensity a scanner measures.

    ITK's NIfTI reader returns them as 0 (a NaN scan would be segmented as if black there), so for NIfTI the values
    stored in the file are checked.
    """
    stored = array
    if image_extension(path) in (".nii", ".nii.gz"):
        try:
            stored = np.asanyarray(nibabel.load(path).dataobj.get_unscaled())  # the file's own type, no copy in float64
        except Exception as e:  # noqa: BLE001 - a header nibabel rejects: ITK read it, check what ITK gave
            logger.debug("%s: nibabel cannot read it (%s); checking ITK's pixels only", path, e)
    bad = int(stored.size - np.count_nonzero(np.isfinite(stored)))
    if bad:
        raise ImageReadError(f"{path}: the image has NaN or infinite values ({bad} of {stored.size} pixels)")


def is_blank(array: np.ndarray) -> bool:
    """Whether every pixel of an ``(H, W)`` or ``(H, W, C)`` image has the same value (colour)."""
    pixels = np.asarray(array)
    return bool(pixels.size) and bool((pixels == pixels[0, 0]).all())


def check_not_blank(array: np.ndarray, source: str | os.PathLike) -> None:
    """Refuse a blank image (see :func:`is_blank`): there is nothing in it to segment.

    Args:
        array: ``(H, W)`` or ``(H, W, C)`` pixels, as :func:`read_image` returns them.
        source: file name for the error message.

    Raises:
        ImageReadError: the image is blank.
    """
    if is_blank(array):
        raise ImageReadError(f"{source}: the image is blank (every pixel has the same value): nothing to segment")


def mask_2d(mask: np.ndarray) -> np.ndarray:
    """A mask as an array, a ``(1, H, W)`` one squeezed to ``(H, W)``; other shapes are returned as they are.

    Args:
        mask: ``(H, W)`` or ``(1, H, W)`` mask (array-like).

    Returns:
        The mask as a numpy array.
    """
    mask = np.asarray(mask)
    return mask[0] if mask.ndim == 3 and mask.shape[0] == 1 else mask


def mask_for_image(mask: np.ndarray, geometry: ImageGeometry) -> np.ndarray:
    """A ``(H, W)`` or ``(1, H, W)`` mask as ``(H, W)``, checked to fit the image's grid.

    Args:
        mask: the mask (array-like).
        geometry: the image it belongs to.

    Returns:
        The ``(H, W)`` mask.

    Raises:
        ValueError: the mask's shape is not the image's.
    """
    mask = mask_2d(mask)
    if mask.shape != geometry.shape_hw:
        raise ValueError(f"mask of shape {mask.shape} does not fit an image of shape {geometry.shape_hw}")
    return mask


def mask_to_image(mask: np.ndarray, geometry: ImageGeometry) -> sitk.Image:
    """Place a ``(H, W)`` mask on an image's grid (2-D, or ``W x H x 1`` when the image was a single-slice volume)."""
    mask = mask_for_image(mask, geometry)
    array = mask[None] if len(geometry.size) == 3 else mask
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def write_mask(
    mask: np.ndarray, geometry: ImageGeometry, path: str | os.PathLike, dtype: str | np.dtype = np.uint8
) -> Path:
    """Write a label mask on the grid of the image it was predicted for.

    The format follows ``path``'s extension (``.nrrd``, ``.nii.gz``, ``.nii``, ``.png``). JPEG would blur label
    values, so a ``.jpg``/``.jpeg`` path is written as PNG beside it.

    Args:
        mask: ``(H, W)`` (or ``(1, H, W)``) class indices.
        geometry: the geometry of the image the mask belongs to.
        path: where to write.
        dtype: stored pixel type (Slicer asks for ``uint8``).

    Returns:
        The path actually written.
    """
    path = Path(path)
    ext = image_extension(path)
    if ext in (".jpg", ".jpeg"):
        path = path.with_name(image_stem(path) + ".png")
        ext = ".png"
    values = np.asarray(mask)
    if values.size and (values.min() < 0 or values.max() > np.iinfo(np.dtype(dtype)).max):
        raise ValueError(f"mask values {values.min()}..{values.max()} do not fit {np.dtype(dtype)}")
    image = mask_to_image(values.astype(dtype), geometry)
    if ext == ".png" and image.GetDimension() == 3:
        image = image[:, :, 0]
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=ext != ".png")
    return path
