"""MONAI dictionary transforms for 2-D ultrasound: loading, resizing, denoising, the method's augmentation.

The data path of one labelled image (see :func:`train_transforms`)::

    LoadUltrasoundd      file -> (C, H, W) float32 in [0, 1] + (1, H, W) int64 class indices, geometry kept in meta
    ResizeToInputd       whole image to input_size x input_size (aspect ratio ignored, as the method does)
    MedianDenoised       5x5 median on the image
    ---- deterministic above (cacheable), random below ----
    RandPaperAugmentd    one of 8 mask variants (dilate/erode/open/close x 3x3/5x5) x one of 4 geometric variants
                         (original, horizontal flip, vertical flip, 1.2x centre zoom)

The same deterministic preprocessing (load, resize, median) runs at training, validation and inference, so the
network always sees the same kind of input; the method applies the median filter to every training copy. Because the
median runs before the geometric variants here (so it can be cached), it commutes exactly with the flips and almost
exactly with the zoom.

Predictions go back to the original image grid with :func:`restore_to_original`; each loaded item keeps what that
needs in its metadata (``"geometry"``, ``"original_shape"``, ``"spatial_shape"``). Batches of validation/inference
items from files of different kinds (a 2-D PNG beside a ``W x H x 1`` NIfTI) do not collate, their geometry lists
differ in length: use batch size 1 or a list collate there (training batches carry no metadata).

Inside ``Compose``, MONAI re-raises a transform's error as ``RuntimeError`` with the original (``ImageReadError`` or
``ValueError`` naming the file) as ``__cause__``; ``sscase_monai.data.validate_labelled_pairs`` reports bad training
files directly, before training.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureTyped,
    Flipd,
    MapTransform,
    Randomizable,
    RandomizableTransform,
    Transform,
    Zoomd,
)
from monai.utils import convert_to_dst_type, convert_to_tensor, ensure_tuple, ensure_tuple_rep

from sscase_monai import io

logger = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE = 256
"""Side of the square network input (the method resizes every image to 256x256)."""

LUMINANCE_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights, as PIL's ``"L"`` mode and OpenCV's RGB-to-gray use."""

MORPHOLOGY_OPERATIONS: tuple[str, ...] = ("dilate", "erode", "open", "close")
"""The method's mask perturbations (simulated annotator disagreement at the boundary)."""

MORPHOLOGY_KERNEL_SIZES: tuple[int, ...] = (3, 5)
"""Square structuring element sides used with every operation in :data:`MORPHOLOGY_OPERATIONS`."""

GEOMETRIC_VARIANTS: tuple[str, ...] = ("original", "hflip", "vflip", "zoom")
"""The method's geometric copies: identity, horizontal flip, vertical flip, 1.2x centre zoom."""

CENTRE_ZOOM = 1.2
"""The method's centre zoom factor."""

_IMAGE_MODE = "bilinear"
_LABEL_MODE = "nearest-exact"  # centre-aligned like bilinear with align_corners=False; torch's "nearest" shifts


def _modes(keys: Sequence[Hashable], label_key: str, mode: str | Sequence[str] | None) -> tuple[str, ...]:
    """Interpolation per key: the given ``mode``, else nearest for the label and bilinear for images."""
    if mode is None:
        return tuple(_LABEL_MODE if key == label_key else _IMAGE_MODE for key in keys)
    return tuple(ensure_tuple_rep(mode, len(keys)))


# ----------------------------------------------------------------------------------------------------------------
# Array conversion (shared with sscase_monai.data's validation)
# ----------------------------------------------------------------------------------------------------------------


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


def _present_values(array: np.ndarray) -> np.ndarray:
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
    values = _present_values(label)
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


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# Deterministic preprocessing
# ----------------------------------------------------------------------------------------------------------------


def _channels_identical(x: torch.Tensor) -> bool:
    return x.shape[0] > 1 and all(torch.equal(x[0], x[c]) for c in range(1, x.shape[0]))


def _resize(x: torch.Tensor, shape_hw: Sequence[int], mode: str, anti_aliasing: bool = True) -> torch.Tensor:
    """Resize ``(C, h, w)`` to ``(C, H, W)``; integer inputs come back in their dtype (use a nearest mode for them)."""
    shape_hw = tuple(int(s) for s in shape_hw)
    if tuple(x.shape[-2:]) == shape_hw:
        return x
    if _channels_identical(x):  # gray replicated to RGB: resize once
        return _resize(x[:1], shape_hw, mode, anti_aliasing).repeat(x.shape[0], 1, 1)
    smooth = mode in ("bilinear", "bicubic")
    out = F.interpolate(
        x[None].float(),
        size=shape_hw,
        mode=mode,
        align_corners=False if smooth else None,
        antialias=anti_aliasing and smooth,  # only acts when downsampling
    )[0]
    return out if x.is_floating_point() else out.to(x.dtype)


class ResizeToInputd(MapTransform):
    """Resize whole images to ``input_size x input_size``, ignoring the aspect ratio (as the method does).

    Images are resized bilinearly with antialiasing when downsampling (torch's PIL-like filter: about 15x faster
    than MONAI ``Resized(anti_aliasing=True)``'s Gaussian pre-smoothing on an 800x540 image); labels with
    ``"nearest-exact"``, which keeps them aligned with the bilinear image. Metadata is kept; the restore path is
    :func:`restore_to_original`, not MONAI's inverse.

    Args:
        keys: keys to resize.
        input_size: output side (or ``(H, W)``).
        label_key: the key resized with ``"nearest-exact"`` when ``mode`` is not given.
        mode: interpolation per key; default ``"bilinear"`` for images, ``"nearest-exact"`` for ``label_key``.
        anti_aliasing: antialias bilinear/bicubic downsampling.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        input_size: int | Sequence[int] = DEFAULT_INPUT_SIZE,
        label_key: str = "label",
        mode: str | Sequence[str] | None = None,
        anti_aliasing: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = tuple(ensure_tuple_rep(input_size, 2))
        if any(int(s) < 1 for s in self.spatial_size):
            raise ValueError(f"input_size must be positive, got {input_size!r}")
        self.mode = _modes(self.keys, label_key, mode)
        self.anti_aliasing = anti_aliasing

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, mode in self.key_iterator(d, self.mode):
            x = convert_to_tensor(d[key], track_meta=True)
            out = _resize(
                x.as_tensor() if isinstance(x, MetaTensor) else x, self.spatial_size, mode, self.anti_aliasing
            )
            d[key], *_ = convert_to_dst_type(out, dst=x, dtype=out.dtype)
        return d


def _oddeven_merge(lo: int, hi: int, r: int) -> Iterator[tuple[int, int]]:
    step = r * 2
    if step < hi - lo:
        yield from _oddeven_merge(lo, hi, step)
        yield from _oddeven_merge(lo + r, hi, step)
        yield from ((i, i + r) for i in range(lo + r, hi - r, step))
    else:
        yield lo, lo + r


def _oddeven_merge_sort(lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """Batcher's odd-even merge sort comparators for wires ``lo..hi`` (inclusive, a power-of-two count)."""
    if hi > lo:
        mid = lo + (hi - lo) // 2
        yield from _oddeven_merge_sort(lo, mid)
        yield from _oddeven_merge_sort(mid + 1, hi)
        yield from _oddeven_merge(lo, hi, 1)


_Program = tuple[tuple[tuple[int, str, int, int], ...], tuple[int, ...]]


def _min_max_program(num_inputs: int, ranks: Sequence[int], inputs_le: Callable[[int, int], bool]) -> _Program:
    """A list of elementwise min/max steps that puts the given ranks of ``num_inputs`` values on output ids.

    Batcher's sorting network, padded with +inf to a power of two, with every comparator whose outcome is already
    known (from the padding, from ``inputs_le``'s known order of the inputs, or from earlier comparators) removed,
    and every step the wanted ranks do not depend on dropped. Values are ids: inputs ``0..num_inputs-1``, then one id
    per step. Returns ``(steps as (id, "min"|"max", a, b), output ids)``.
    """
    nodes: list[tuple[str, int, int]] = []
    known: dict[tuple[int, int], bool] = {}

    def le(u: int, v: int) -> bool:  # is value u <= value v whatever the inputs? (sound, not complete)
        if u == v:
            return True
        if u < num_inputs and v < num_inputs:
            return inputs_le(u, v)
        if (u, v) not in known:
            op_u, a_u, b_u = nodes[u - num_inputs] if u >= num_inputs else ("", 0, 0)
            op_v, a_v, b_v = nodes[v - num_inputs] if v >= num_inputs else ("", 0, 0)
            known[(u, v)] = bool(
                (op_u == "min" and (le(a_u, v) or le(b_u, v)))
                or (op_v == "max" and (le(u, a_v) or le(u, b_v)))
                or (op_v == "min" and le(u, a_v) and le(u, b_v))
                or (op_u == "max" and le(a_u, v) and le(b_u, v))
            )
        return known[(u, v)]

    size = 1 << (num_inputs - 1).bit_length()
    wires: list[int | None] = [*range(num_inputs)] + [None] * (size - num_inputs)  # None: +inf padding
    for i, j in _oddeven_merge_sort(0, size - 1):
        a, b = wires[i], wires[j]
        if b is None or (a is not None and le(a, b)):
            continue
        if a is None or le(b, a):
            wires[i], wires[j] = b, a
            continue
        nodes += [("min", a, b), ("max", a, b)]
        wires[i], wires[j] = num_inputs + len(nodes) - 2, num_inputs + len(nodes) - 1
    outputs = tuple(int(wires[r]) for r in ranks)
    live: set[int] = set()
    pending = list(outputs)
    while pending:
        v = pending.pop()
        if v >= num_inputs and v not in live:
            live.add(v)
            pending += nodes[v - num_inputs][1:]
    return tuple((v, *nodes[v - num_inputs]) for v in sorted(live)), outputs


@functools.cache
def _median_programs(kernel_size: int) -> tuple[_Program, _Program]:
    """Sort each window column, then select the median of the ``k x k`` window from ``k`` sorted columns."""
    k = kernel_size
    column_sort = _min_max_program(k, range(k), lambda u, v: False)
    # input c * k + r is rank r of the window's column c; ranks within one column are ordered
    median = _min_max_program(k * k, [k * k // 2], lambda u, v: u // k == v // k and u % k <= v % k)
    return column_sort, median


def _median_filter_2d(image: np.ndarray, kernel_size: int) -> np.ndarray:
    """Exact ``k x k`` median of one ``(H, W)`` plane, edges replicated, as elementwise min/max of shifted views.

    NumPy on purpose: each step is a small elementwise op (one 256x256 plane) that torch would split over its
    intra-op threads, and on a busy machine every such split waits for a descheduled thread (measured here with
    another job running: median 6-22 ms, p90 ~1 s per plane with torch on 2 threads; NumPy 3.4-3.6 ms throughout).
    NumPy also releases the GIL, so preprocessing threads (the trainer's cache) run it in parallel.
    """
    (sort_steps, sorted_ids), (median_steps, (median_id,)) = _median_programs(kernel_size)
    k, pad = kernel_size, kernel_size // 2
    h, w = image.shape
    padded = np.pad(image, pad, mode="edge")
    values: dict[int, np.ndarray] = {i: padded[i : i + h] for i in range(k)}  # the k rows of every column
    for v, op, a, b in sort_steps:
        values[v] = np.minimum(values[a], values[b]) if op == "min" else np.maximum(values[a], values[b])
    ranks = [values[i] for i in sorted_ids]
    values = {c * k + r: ranks[r][:, c : c + w] for c in range(k) for r in range(k)}
    last_use = {u: step for step, (_, _, a, b) in enumerate(median_steps) for u in (a, b)}
    free: list[np.ndarray] = []  # reusing dead buffers keeps the working set in cache: ~1.5x faster
    for step, (v, op, a, b) in enumerate(median_steps):
        out = free.pop() if free else np.empty((h, w), dtype=image.dtype)
        (np.minimum if op == "min" else np.maximum)(values[a], values[b], out=out)
        values[v] = out
        free += [values.pop(u) for u in {a, b} if u >= k * k and last_use[u] == step]
    return values[median_id]


def median_denoise(image: np.ndarray | torch.Tensor, kernel_size: int = 5) -> np.ndarray | torch.Tensor:
    """``kernel_size x kernel_size`` median of each channel of a ``(C, H, W)`` image, edges replicated.

    The values are exactly ``scipy.ndimage.median_filter(image, size=(1, k, k), mode="nearest")`` (edges as OpenCV's
    ``medianBlur``), computed by a pruned sorting network of elementwise min/max on shifted views: ~3.5 ms instead of
    scipy's 17-22 ms (MONAI ``MedianSmooth``: ~22 ms) per 256x256 channel on one core, in the image's own dtype.
    Identical channels (gray replicated to RGB) are filtered once.

    Returns:
        The filtered image, same type, shape and dtype.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size!r}")
    x = convert_to_tensor(image, track_meta=False)
    if x.ndim != 3:
        raise ValueError(f"expected a (C, H, W) image, got shape {tuple(x.shape)}")
    planes = x.detach().cpu().numpy()
    if kernel_size == 1:
        out = planes.copy()
    elif len(planes) > 1 and all(np.array_equal(planes[0], plane) for plane in planes[1:]):
        out = np.repeat(_median_filter_2d(planes[0], kernel_size)[None], x.shape[0], axis=0)
    else:
        out = np.stack([_median_filter_2d(plane, kernel_size) for plane in planes])
    result, *_ = convert_to_dst_type(out, dst=image)
    return result


class MedianDenoised(MapTransform):
    """The method's speckle denoising: a ``kernel_size x kernel_size`` median filter on each image channel.

    The method filters the grayscale image; a gray image's three channels are identical copies here, so this is the
    same (and is computed once). RGB input is filtered per channel. See :func:`median_denoise` for why this is not
    MONAI's ``MedianSmoothd`` (same values inside the image, ~5x slower).

    Args:
        keys: image keys (never labels).
        kernel_size: odd window side (the method: 5).
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection = "image", kernel_size: int = 5, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size!r}")
        self.kernel_size = kernel_size

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = median_denoise(convert_to_tensor(d[key], track_meta=True), self.kernel_size)
        return d


# ----------------------------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------------------------


def _square_filter(mask: np.ndarray, kernel_size: int, reduce: np.ufunc) -> np.ndarray:
    """``k x k`` min or max filter of a 2-D array, edges replicated: exactly ``scipy.ndimage.minimum_filter`` /
    ``maximum_filter(size=(k, k), mode="nearest")`` (same window placement for even ``k``), as elementwise
    ``reduce`` over shifted views, one axis after the other (~7x faster than scipy on a 256x256 mask)."""
    left = kernel_size // 2
    out = mask
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (left, kernel_size - 1 - left)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        views = [padded[i : i + n] if axis == 0 else padded[:, i : i + n] for i in range(kernel_size)]
        out = views[0].copy()
        for view in views[1:]:
            reduce(out, view, out=out)
    return out


def _binary_morphology(mask: np.ndarray, operation: str, kernel_size: int) -> np.ndarray:
    # Flat square elements are separable min/max filters; edge replication keeps masks touching the border intact.
    grow = lambda m: _square_filter(m, kernel_size, np.maximum)  # noqa: E731
    shrink = lambda m: _square_filter(m, kernel_size, np.minimum)  # noqa: E731
    if operation == "dilate":
        return grow(mask)
    if operation == "erode":
        return shrink(mask)
    if operation == "open":
        return grow(shrink(mask))
    return shrink(grow(mask))


def perturb_mask(mask: np.ndarray | torch.Tensor, operation: str, kernel_size: int) -> np.ndarray | torch.Tensor:
    """Apply one morphological operation with a square kernel to a class-index mask.

    Each foreground class is processed as its own binary mask: pixels it loses become background, and it may only
    grow into pixels that were background (a class never takes another's pixels; where two grown classes meet,
    the higher index wins). No new class value can appear. For a binary mask this is plain binary morphology.

    Args:
        mask: ``(..., H, W)`` integer class indices.
        operation: one of :data:`MORPHOLOGY_OPERATIONS`.
        kernel_size: side of the square structuring element.

    Returns:
        The perturbed mask, same type, shape and dtype.
    """
    if operation not in MORPHOLOGY_OPERATIONS:
        raise ValueError(f"operation must be one of {MORPHOLOGY_OPERATIONS}, got {operation!r}")
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be positive, got {kernel_size!r}")
    values = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    planes = values.reshape(-1, *values.shape[-2:])
    out = planes.copy()
    for plane, result in zip(planes, out, strict=True):
        for cls in _present_values(plane):  # bincount for uint8 (the training cache's labels): ~2x faster
            if cls == 0:
                continue
            kept = _binary_morphology((plane == cls).astype(np.uint8), operation, kernel_size).astype(bool)
            result[(plane == cls) & ~kept] = 0
            result[(plane == 0) & kept] = cls
    out = out.reshape(values.shape)
    if isinstance(mask, torch.Tensor):
        result_t, *_ = convert_to_dst_type(out, dst=mask)
        return result_t
    return out


def _check_morphology_options(operations: Sequence[str], kernel_sizes: Sequence[int]) -> None:
    bad = [op for op in operations if op not in MORPHOLOGY_OPERATIONS]
    if bad or not operations:
        raise ValueError(f"operations must be a non-empty subset of {MORPHOLOGY_OPERATIONS}, got {tuple(operations)!r}")
    if not kernel_sizes or any(int(k) < 1 for k in kernel_sizes):
        raise ValueError(f"kernel_sizes must be positive integers, got {tuple(kernel_sizes)!r}")


class RandMaskMorphologyd(RandomizableTransform, MapTransform):
    """Perturb label masks with one random morphological operation x kernel size (see :func:`perturb_mask`).

    Simulates annotator disagreement at the boundary. Each call picks uniformly one of ``operations`` and one of
    ``kernel_sizes`` (square kernels); with probability ``1 - prob`` the mask is left as is.

    Args:
        keys: label keys.
        prob: probability of perturbing.
        operations: subset of :data:`MORPHOLOGY_OPERATIONS`.
        kernel_sizes: square kernel sides.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        prob: float = 1.0,
        operations: Sequence[str] = MORPHOLOGY_OPERATIONS,
        kernel_sizes: Sequence[int] = MORPHOLOGY_KERNEL_SIZES,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        _check_morphology_options(operations, kernel_sizes)
        self.operations = tuple(operations)
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.operation: str = self.operations[0]
        self.kernel_size: int = self.kernel_sizes[0]

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self.operation = self.operations[self.R.randint(len(self.operations))]
        self.kernel_size = self.kernel_sizes[self.R.randint(len(self.kernel_sizes))]

    def __call__(self, data: Mapping[Hashable, Any], randomize: bool = True) -> dict[Hashable, Any]:
        d = dict(data)
        if randomize:
            self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = perturb_mask(d[key], self.operation, self.kernel_size)
        return d


def _restore_integer_dtypes(out: dict, before: Mapping, keys: Sequence[Hashable]) -> dict:
    # MONAI's Zoom returns float32 whatever the input; labels go back to their integer dtype (values are exact).
    for key in keys:
        if key in out and isinstance(before[key], torch.Tensor) and not before[key].is_floating_point():
            out[key] = out[key].to(before[key].dtype)
    return out


def _zoom(zoomer: Zoomd, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
    """``zoomer(data)``, zooming an image whose channels are identical (gray replicated to RGB) once and repeating it.

    One channel is ~5x faster than three with MONAI's ``Zoom`` here (1.1 vs 5.9 ms at 256x256, one thread); the result
    equals zooming every channel up to float rounding. Labels keep their integer dtype.
    """
    d = dict(data)
    repeats = {}
    for key in zoomer.key_iterator(d):
        x = d[key]
        if isinstance(x, torch.Tensor) and x.is_floating_point() and _channels_identical(x):
            repeats[key] = x.shape[0]
            d[key] = x[:1]
    out = zoomer(d)
    for key, count in repeats.items():
        out[key] = out[key].repeat(count, 1, 1)
    return _restore_integer_dtypes(out, data, zoomer.keys)


def _centre_zoom(keys: KeysCollection, zoom: float, mode: Sequence[str], allow_missing_keys: bool) -> Zoomd:
    # Zoom with keep_size scales the whole image by `zoom` and centre-crops back to the size: the same as cropping the
    # central 1/zoom region and resizing it up (to within half a pixel of the zoomed grid).
    return Zoomd(keys, zoom=zoom, mode=mode, keep_size=True, allow_missing_keys=allow_missing_keys)


class RandCentreZoomd(RandomizableTransform, MapTransform):
    """With probability ``prob``, zoom into the centre by ``zoom`` keeping the size (crop the central ``1/zoom`` and
    resize back), bilinear for images and nearest for labels (labels keep their integer dtype).

    Args:
        keys: image and label keys.
        zoom: zoom factor (the method: 1.2).
        prob: probability of zooming.
        label_key: the key zoomed with ``"nearest-exact"`` when ``mode`` is not given.
        mode: interpolation per key; default ``"bilinear"`` for images, ``"nearest-exact"`` for ``label_key``.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        zoom: float = CENTRE_ZOOM,
        prob: float = 0.5,
        label_key: str = "label",
        mode: str | Sequence[str] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if zoom < 1.0:
            raise ValueError(f"zoom must be >= 1 (a zoom in), got {zoom!r}")
        self.zoomer = _centre_zoom(self.keys, zoom, _modes(self.keys, label_key, mode), allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any], randomize: bool = True) -> dict[Hashable, Any]:
        d = dict(data)
        if randomize:
            self.randomize(None)
        if not self._do_transform:
            return d
        return _zoom(self.zoomer, d)


class RandPaperAugmentd(Randomizable, MapTransform):
    """The method's augmentation, one random draw per call: one mask variant x one geometric variant.

    The method expands each labelled image into 32 copies per epoch: 8 mask variants (:data:`MORPHOLOGY_OPERATIONS`
    x :data:`MORPHOLOGY_KERNEL_SIZES`) x 4 geometric variants (:data:`GEOMETRIC_VARIANTS`). Here each call draws one
    of the combinations uniformly, so ``N`` draws per image (``sscase_monai.data.RepeatDataset``) give the same
    distribution without materialising copies. :attr:`variants` and :meth:`apply_variant` give the exact expansion.

    The mask is perturbed first, then image and mask are flipped or zoomed together.

    Args:
        keys: image and label keys (geometric variants apply to all of them).
        label_key: the key the mask perturbation applies to.
        operations: mask operations.
        kernel_sizes: square kernel sides.
        geometric_variants: subset of :data:`GEOMETRIC_VARIANTS`.
        zoom: centre zoom factor.
        mask_prob: probability of perturbing the mask (the method: 1, every copy has a perturbed mask).
        mode: interpolation per key for the zoom; default bilinear for images, ``"nearest-exact"`` for ``label_key``.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        label_key: str = "label",
        operations: Sequence[str] = MORPHOLOGY_OPERATIONS,
        kernel_sizes: Sequence[int] = MORPHOLOGY_KERNEL_SIZES,
        geometric_variants: Sequence[str] = GEOMETRIC_VARIANTS,
        zoom: float = CENTRE_ZOOM,
        mask_prob: float = 1.0,
        mode: str | Sequence[str] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        _check_morphology_options(operations, kernel_sizes)
        bad = [g for g in geometric_variants if g not in GEOMETRIC_VARIANTS]
        if bad or not geometric_variants:
            raise ValueError(
                f"geometric_variants must be a non-empty subset of {GEOMETRIC_VARIANTS}, "
                f"got {tuple(geometric_variants)!r}"
            )
        if not 0.0 <= mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob!r}")
        self.label_key = label_key
        self.operations = tuple(operations)
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.geometric_variants = tuple(geometric_variants)
        self.mask_prob = mask_prob
        self.flips = {
            "hflip": Flipd(self.keys, spatial_axis=1, allow_missing_keys=allow_missing_keys),  # columns
            "vflip": Flipd(self.keys, spatial_axis=0, allow_missing_keys=allow_missing_keys),  # rows
        }
        self.zoomer = _centre_zoom(self.keys, zoom, _modes(self.keys, label_key, mode), allow_missing_keys)
        self.variant: tuple[str | None, int | None, str] = (None, None, "original")

    @property
    def variants(self) -> list[tuple[str, int, str]]:
        """Every ``(operation, kernel_size, geometric_variant)`` combination: the method's 32 copies."""
        return [(op, k, g) for op in self.operations for k in self.kernel_sizes for g in self.geometric_variants]

    def randomize(self, data: Any = None) -> None:
        perturb = self.R.rand() < self.mask_prob
        operation = self.operations[self.R.randint(len(self.operations))]
        kernel_size = self.kernel_sizes[self.R.randint(len(self.kernel_sizes))]
        geometric = self.geometric_variants[self.R.randint(len(self.geometric_variants))]
        self.variant = (operation, kernel_size, geometric) if perturb else (None, None, geometric)

    def apply_variant(
        self, data: Mapping[Hashable, Any], operation: str | None, kernel_size: int | None, geometric: str
    ) -> dict[Hashable, Any]:
        """Apply one given variant (``operation=None`` leaves the mask as annotated)."""
        d = dict(data)
        if operation is not None and self.label_key in d:
            d[self.label_key] = perturb_mask(d[self.label_key], operation, int(kernel_size))
        if geometric in self.flips:
            return self.flips[geometric](d)
        if geometric == "zoom":
            return _zoom(self.zoomer, d)
        if geometric != "original":
            raise ValueError(f"geometric variant must be one of {GEOMETRIC_VARIANTS}, got {geometric!r}")
        return d

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        return self.apply_variant(data, *self.variant)


# ----------------------------------------------------------------------------------------------------------------
# Pipelines
# ----------------------------------------------------------------------------------------------------------------


def build_preprocess(
    input_size: int = DEFAULT_INPUT_SIZE,
    channels: int = 3,
    num_classes: int = 2,
    denoise: bool = True,
    keys: KeysCollection = ("image", "label"),
    image_key: str = "image",
    label_key: str = "label",
    max_pixels: int = io.DEFAULT_MAX_PIXELS,
    allow_missing_keys: bool = False,
) -> list[Transform]:
    """The deterministic part, identical at training, validation and inference: load -> resize -> median denoise.

    Its output can be cached (``monai.data.CacheDataset``).

    Args:
        input_size: network input side, a multiple of 32.
        channels: network input channels (1 or 3).
        num_classes: classes including background.
        denoise: apply the 5x5 median (the method does; keep the same setting at inference).
        keys: keys to load (``("image",)`` for inference).
        image_key: the image key.
        label_key: the label key.
        max_pixels: refuse larger images.
        allow_missing_keys: skip absent keys.

    Returns:
        A list of transforms, to extend or pass to ``Compose``.
    """
    if input_size < 32 or input_size % 32:
        raise ValueError(f"input_size must be a positive multiple of 32, got {input_size!r}")
    keys = ensure_tuple(keys)
    image_keys = [key for key in keys if key != label_key]
    transforms: list[Transform] = [
        LoadUltrasoundd(keys, image_key, label_key, channels, num_classes, max_pixels, allow_missing_keys),
        ResizeToInputd(keys, input_size, label_key, allow_missing_keys=allow_missing_keys),
    ]
    if denoise and image_keys:
        transforms.append(MedianDenoised(image_keys, kernel_size=5, allow_missing_keys=allow_missing_keys))
    return transforms


def build_train_augment(
    keys: KeysCollection = ("image", "label"),
    label_key: str = "label",
    operations: Sequence[str] = MORPHOLOGY_OPERATIONS,
    kernel_sizes: Sequence[int] = MORPHOLOGY_KERNEL_SIZES,
    geometric_variants: Sequence[str] = GEOMETRIC_VARIANTS,
    zoom: float = CENTRE_ZOOM,
    mask_prob: float = 1.0,
) -> list[Transform]:
    """The random part of training: the method's augmentation (:class:`RandPaperAugmentd`), one draw per call.

    It ends by turning MetaTensors into plain tensors: training batches need no metadata, and items from files of
    different kinds (a 2-D PNG beside a ``W x H x 1`` NIfTI) have geometry lists of different lengths that would not
    collate. Seed it with ``Compose(...).set_random_state(seed)``, or per item through
    ``sscase_monai.data.RepeatDataset``.
    """
    keys = ensure_tuple(keys)
    return [
        RandPaperAugmentd(
            keys,
            label_key=label_key,
            operations=operations,
            kernel_sizes=kernel_sizes,
            geometric_variants=geometric_variants,
            zoom=zoom,
            mask_prob=mask_prob,
        ),
        EnsureTyped(keys, data_type="tensor", track_meta=False),
    ]


def train_transforms(
    input_size: int = DEFAULT_INPUT_SIZE, channels: int = 3, num_classes: int = 2, denoise: bool = True
) -> Compose:
    """Preprocessing + the method's augmentation, for ``{"image": path, "label": path}`` items."""
    return Compose(build_preprocess(input_size, channels, num_classes, denoise) + build_train_augment())


def val_transforms(
    input_size: int = DEFAULT_INPUT_SIZE, channels: int = 3, num_classes: int = 2, denoise: bool = True
) -> Compose:
    """Preprocessing only, for labelled ``{"image": path, "label": path}`` items."""
    return Compose(build_preprocess(input_size, channels, num_classes, denoise))


def infer_transforms(
    input_size: int = DEFAULT_INPUT_SIZE, channels: int = 3, denoise: bool = True, image_key: str = "image"
) -> Compose:
    """Preprocessing of ``{"image": path}`` items for inference (same as training's, so inputs look alike)."""
    return Compose(build_preprocess(input_size, channels, denoise=denoise, keys=(image_key,), image_key=image_key))


# ----------------------------------------------------------------------------------------------------------------
# Back to the original grid
# ----------------------------------------------------------------------------------------------------------------


def original_shape_of(original: io.ImageGeometry | Mapping | Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` of the original image from its geometry, a geometry dict, an item's meta dict or ``(H, W)``."""
    if isinstance(original, io.ImageGeometry):
        return original.shape_hw
    if isinstance(original, Mapping):
        if "size" in original:
            return io.ImageGeometry.from_dict(original).shape_hw
        if "geometry" in original:
            return io.ImageGeometry.from_dict(original["geometry"]).shape_hw
        if "original_shape" in original:
            return original_shape_of(original["original_shape"])
        raise ValueError(f"no geometry or original_shape in {sorted(map(str, original))!r}")
    shape = [int(np.asarray(s).item()) for s in original]
    if len(shape) != 2:
        raise ValueError(f"original shape must be (H, W), got {tuple(original)!r}")
    return shape[0], shape[1]


def resize_probabilities_to(
    probabilities: np.ndarray | torch.Tensor, shape_hw: Sequence[int]
) -> np.ndarray | torch.Tensor:
    """Resize ``(C, h, w)`` probability (or logit) maps to ``(C, H, W)`` bilinearly (antialiased if shrinking).

    Returns:
        The same type as the input, float32.
    """
    x = convert_to_tensor(probabilities, track_meta=False)
    if x.ndim != 3:
        raise ValueError(f"expected (C, h, w) probabilities, got shape {tuple(x.shape)}")
    out = _resize(x.float(), shape_hw, _IMAGE_MODE)
    result, *_ = convert_to_dst_type(out, dst=probabilities, dtype=torch.float32)
    return result


def restore_to_original(
    prediction: np.ndarray | torch.Tensor,
    original: io.ImageGeometry | Mapping | Sequence[int],
    mode: str = "auto",
    threshold: float = 0.5,
) -> np.ndarray | torch.Tensor:
    """Bring a prediction made at the network's size back to the original image's ``(H, W)`` as a class-index mask.

    Probabilities are resized bilinearly and then decided (argmax for several channels, ``> threshold`` for one),
    which gives smoother, better-placed boundaries than resizing a mask with nearest neighbour. Masks are resized
    with nearest neighbour.

    Args:
        prediction: ``(C, h, w)`` probabilities (sigmoid/softmax applied) or a ``(1, h, w)`` class-index mask.
        original: the original image's :class:`~sscase_monai.io.ImageGeometry`, its ``to_dict()``, the loaded
            item's meta dict, or ``(H, W)``.
        mode: ``"probabilities"``, ``"mask"``, or ``"auto"`` (integer/bool dtype = mask, floating = probabilities).
        threshold: foreground threshold for single-channel probabilities.

    Returns:
        ``(1, H, W)`` int64 class indices, numpy or torch like the input.
    """
    if mode not in ("auto", "probabilities", "mask"):
        raise ValueError(f"mode must be 'auto', 'probabilities' or 'mask', got {mode!r}")
    shape_hw = original_shape_of(original)
    x = convert_to_tensor(prediction, track_meta=False)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"expected a (C, h, w) prediction, got shape {tuple(x.shape)}")
    if mode == "auto":
        mode = "probabilities" if x.is_floating_point() else "mask"
    if mode == "mask":
        if x.shape[0] != 1:
            raise ValueError(f"a mask must have one channel, got shape {tuple(x.shape)}")
        mask = _resize(x.long(), shape_hw, _LABEL_MODE)
    else:
        probabilities = _resize(x.float(), shape_hw, _IMAGE_MODE)
        if probabilities.shape[0] == 1:
            mask = (probabilities > threshold).long()
        else:
            mask = probabilities.argmax(dim=0, keepdim=True)
    result, *_ = convert_to_dst_type(mask, dst=prediction, dtype=torch.int64)
    return result
