"""Loading 2-D ultrasound into the network's layout: files or arrays -> ``(C, H, W)`` images and class-index labels.

The array conversions (:func:`image_to_channel_first`, :func:`label_to_class_indices`) are shared with
``sscase_monai.data``'s validation of training files, so a file that validates is a file that loads.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from sscase_monai import io

LUMINANCE_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights, as PIL's ``"L"`` mode and OpenCV's RGB-to-gray use."""


def _drop_opaque_alpha(array: np.ndarray, source: str) -> np.ndarray:
    """``(H, W, 2|4)`` -> ``(H, W, 1|3)`` when the alpha channel is fully opaque; transparency is refused."""
    alpha = array[..., -1]
    if array.dtype == np.bool_:
        opaque = True
    else:
        opaque = 1.0 if np.issubdtype(array.dtype, np.floating) else np.iinfo(array.dtype).max
    if alpha.min() < opaque:
        transparent = int(np.count_nonzero(alpha < opaque))
        raise io.ImageReadError(
            f"{source}: has an alpha channel with {transparent} transparent pixel(s); save it without transparency "
            "(the pixels under a transparent alpha are undefined)"
        )
    return array[..., :-1]


def _split_channels(array: np.ndarray, source: str) -> tuple[np.ndarray, int]:
    """``(H, W)`` or ``(H, W, C)`` -> ``(H, W, C')`` with C' in (1, 3) (alpha dropped) and the file's channel count."""
    if array.ndim == 2:
        return array[..., None], 1
    if array.ndim != 3:
        raise io.ImageReadError(
            f"{source}: expected a 2-D image (H, W) or (H, W, C), got an array of shape {array.shape}"
        )
    channels = array.shape[-1]
    if channels in (2, 4):
        return _drop_opaque_alpha(array, source), channels
    if channels in (1, 3):
        return array, channels
    raise io.ImageReadError(f"{source}: {channels} channels per pixel; expected gray, gray+alpha, RGB or RGBA")


def scale_intensity_to_unit(array: np.ndarray, source: str = "<array>") -> np.ndarray:
    """Scale an image's values to float32 in [0, 1].

    ``uint8`` is divided by 255 and ``bool`` maps to {0, 1}; floating images already inside [0, 1] are kept; every
    other image (16-bit, signed, float outside [0, 1]) is min-max scaled over all its pixels and channels. Plain
    min-max (not percentiles) keeps the brightest echoes (bone) unsaturated and gives a 16-bit copy of an 8-bit scan
    the same look; a constant image becomes zeros.

    Args:
        array: pixel values, any shape.
        source: file name for error messages.

    Returns:
        float32 array of the same shape.

    Raises:
        ImageReadError: the image has NaN or infinite values.
    """
    if array.dtype == np.uint8:
        return array.astype(np.float32) * np.float32(1.0 / 255.0)
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    values = array.astype(np.float32)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(values).all():
        raise io.ImageReadError(f"{source}: the image has NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if np.issubdtype(array.dtype, np.floating) and low >= 0.0 and high <= 1.0:
        return values
    if high <= low:
        return np.zeros_like(values)
    values -= np.float32(low)
    values *= np.float32(1.0 / (high - low))
    return values


def image_to_channel_first(array: np.ndarray, channels: int = 3, source: str = "<array>") -> np.ndarray:
    """Turn a read image into the network's input layout: ``(channels, H, W)`` float32 in [0, 1].

    Gray is replicated to 3 channels; RGB becomes gray by luminance (:data:`LUMINANCE_WEIGHTS`) when
    ``channels == 1``; a fully opaque alpha channel is dropped, a transparent one refused.

    Args:
        array: ``(H, W)`` or ``(H, W, C)`` as :func:`sscase_monai.io.read_image` returns it.
        channels: 1 or 3.
        source: file name for error messages.

    Returns:
        ``(channels, H, W)`` float32 array.

    Raises:
        ImageReadError: unsupported channel layout, transparency, or non-finite values.
        ValueError: ``channels`` is not 1 or 3.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    pixels, _ = _split_channels(np.asarray(array), source)
    hwc = scale_intensity_to_unit(pixels, source)
    if hwc.shape[-1] == 3 and channels == 1:
        gray = hwc @ np.asarray(LUMINANCE_WEIGHTS, dtype=np.float32)
        return np.ascontiguousarray(gray[None])
    chw = np.moveaxis(hwc, -1, 0)
    if chw.shape[0] == 1 and channels == 3:
        chw = np.repeat(chw, 3, axis=0)
    return np.ascontiguousarray(chw)


def present_values(array: np.ndarray) -> np.ndarray:
    """The distinct values of an integer mask, ascending."""
    if array.dtype == np.uint8:  # bincount is ~20x faster than unique on a full-size label
        return np.flatnonzero(np.bincount(array.reshape(-1), minlength=256))
    return np.unique(array)


def _format_values(values: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(v) for v in values[:limit].tolist())
    return f"[{shown}{', ...' if len(values) > limit else ''}] ({len(values)} distinct)"


def label_to_class_indices(array: np.ndarray, num_classes: int = 2, source: str = "<array>") -> np.ndarray:
    """Turn a read label into ``(1, H, W)`` int64 class indices in ``0..num_classes-1``.

    Binary labels stored as {0, 255} map to {0, 1}. A color label whose channels are equal (a gray mask saved as RGB)
    counts as gray.

    Args:
        array: ``(H, W)`` or ``(H, W, C)`` as :func:`sscase_monai.io.read_image` returns it.
        num_classes: classes including background (2 = binary).
        source: file name for error messages.

    Returns:
        ``(1, H, W)`` int64 array.

    Raises:
        ImageReadError: a color label with different channels, or transparency.
        ValueError: values outside the classes (the message names the file and the values found).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 (background + one class), got {num_classes!r}")
    pixels, _ = _split_channels(np.asarray(array), source)
    if pixels.shape[-1] > 1 and not all(np.array_equal(pixels[..., 0], p) for p in np.moveaxis(pixels, -1, 0)[1:]):
        raise io.ImageReadError(
            f"{source}: a color label with different channels; save labels as one channel of class indices"
        )
    label = pixels[..., 0]
    values = present_values(label)
    if np.issubdtype(label.dtype, np.floating) and not np.array_equal(values, np.round(values)):
        raise ValueError(f"{source}: label values must be whole class indices, found {_format_values(values)}")
    allowed = set(range(num_classes))
    found = {int(v) for v in values.tolist()}
    if num_classes == 2 and found <= {0, 255} and 255 in found:
        return (label[None] == 255).astype(np.int64)
    if not found <= allowed:
        outside = np.asarray(sorted(found - allowed))
        allowed_text = "{0, 1} or {0, 255}" if num_classes == 2 else f"0..{num_classes - 1}"
        raise ValueError(
            f"{source}: label values {_format_values(outside)} are outside the {num_classes} configured classes "
            f"(allowed {allowed_text}); values found: {_format_values(values)}"
        )
    return np.ascontiguousarray(label[None].astype(np.int64))


def _read(value: Any, max_pixels: int) -> tuple[np.ndarray, io.ImageGeometry, str]:
    if isinstance(value, str | os.PathLike):
        array, geometry = io.read_image(value, max_pixels=max_pixels)
        return array, geometry, str(value)
    if isinstance(value, np.ndarray | torch.Tensor):
        array = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
        if array.ndim not in (2, 3):
            raise io.ImageReadError(f"<array>: expected (H, W) or (H, W, C), got shape {array.shape}")
        return array, io.ImageGeometry.identity(array.shape[:2]), "<array>"
    raise TypeError(f"expected a file path or an (H, W[, C]) array, got {type(value).__name__}")


class LoadUltrasoundd(MapTransform):
    """Load 2-D ultrasound images and labels (PNG, JPEG, NIfTI, NRRD, DICOM) into the network's layout.

    The image becomes a ``(channels, H, W)`` float32 :class:`~monai.data.MetaTensor` in [0, 1] (see
    :func:`image_to_channel_first`), the label a ``(1, H, W)`` int64 MetaTensor of class indices (see
    :func:`label_to_class_indices`). Single-slice volumes ``W x H x 1`` (how Slicer saves a label for a PNG) count as
    2-D. Each item's meta holds ``"filename_or_obj"``, ``"geometry"`` (:meth:`ImageGeometry.to_dict`),
    ``"original_shape"`` ``(H, W)``, ``"spatial_shape"`` (the same, as MONAI's loaders and MONAI Label's ``Restored``
    read it), ``"original_channels"`` and ``"original_dtype"``.

    Keys other than ``label_key`` load as images. In-memory ``(H, W[, C])`` arrays are accepted too (unit geometry).

    Args:
        keys: the keys to load.
        image_key: the image whose size the label must match.
        label_key: the key loaded as a label.
        channels: network input channels, 1 or 3.
        num_classes: classes including background.
        max_pixels: refuse larger images (memory bound).
        allow_missing_keys: skip absent keys instead of raising.

    Raises:
        ImageReadError: (when called) a file that cannot be read or used.
        ValueError: (when called) label values outside the classes, or a label whose size differs from its image.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        image_key: str = "image",
        label_key: str = "label",
        channels: int = 3,
        num_classes: int = 2,
        max_pixels: int = io.DEFAULT_MAX_PIXELS,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes!r}")
        self.image_key = image_key
        self.label_key = label_key
        self.channels = channels
        self.num_classes = num_classes
        self.max_pixels = max_pixels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            array, geometry, source = _read(d[key], self.max_pixels)
            if key == self.label_key:
                values = label_to_class_indices(array, self.num_classes, source)
            else:
                values = image_to_channel_first(array, self.channels, source)
            meta = {
                "filename_or_obj": source,
                "geometry": geometry.to_dict(),
                "original_shape": tuple(int(s) for s in array.shape[:2]),
                "spatial_shape": np.asarray(array.shape[:2]),
                "original_channels": 1 if array.ndim == 2 else int(array.shape[-1]),
                "original_dtype": str(array.dtype),
            }
            d[key] = MetaTensor(torch.from_numpy(values), meta=meta)
        self._check_label_fits_image(d)
        return d

    def _check_label_fits_image(self, d: dict) -> None:
        if self.label_key not in self.keys or self.image_key not in self.keys:
            return
        image, label = d.get(self.image_key), d.get(self.label_key)
        if not isinstance(image, MetaTensor) or not isinstance(label, MetaTensor):
            return
        image_shape, label_shape = image.meta["original_shape"], label.meta["original_shape"]
        if image_shape != label_shape:
            raise ValueError(
                f"label {label.meta['filename_or_obj']} has (H, W) = {label_shape} but its image "
                f"{image.meta['filename_or_obj']} has (H, W) = {image_shape}"
            )
