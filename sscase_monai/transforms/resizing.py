"""Resizing to the network's input and back to each image's own grid.

The method resizes whole images to ``input_size x input_size`` ignoring the aspect ratio (a model may instead take
``(height, width)`` close to its scans' aspect, e.g. 256x384 for HC18's 800x540); predictions go back to the
original ``(H, W)`` as probabilities (bilinear) and are only then decided into class indices, which places
boundaries better than resizing a mask.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type, convert_to_tensor, ensure_tuple_rep

from sscase_monai import io
from sscase_monai.probabilities import DEFAULT_THRESHOLD, class_indices

DEFAULT_INPUT_SIZE = 256
"""Side of the square network input (the method resizes every image to 256x256)."""

INPUT_MULTIPLE = 32
"""Each side of the network input is a multiple of this (the encoder halves the grid five times)."""

InputSize = int | tuple[int, int]
"""A network input: a side (square, as the method) or ``(height, width)``, e.g. ``(256, 384)`` for 800x540 scans."""


def input_shape(input_size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` of the network input ``input_size`` (a side or ``(height, width)``), each a positive
    multiple of :data:`INPUT_MULTIPLE`.

    Raises:
        ValueError: another shape, showing it.
    """
    sides = (input_size, input_size) if isinstance(input_size, (int, np.integer)) else tuple(input_size)
    if len(sides) != 2 or not all(
        isinstance(s, (int, np.integer)) and s >= INPUT_MULTIPLE and s % INPUT_MULTIPLE == 0 for s in sides
    ):
        raise ValueError(
            f"input_size must be a side or (height, width), each a positive multiple of {INPUT_MULTIPLE}, "
            f"got {input_size!r}"
        )
    return int(sides[0]), int(sides[1])


def normalize_input_size(input_size: int | Sequence[int]) -> InputSize:
    """``input_size`` checked (:func:`input_shape`) and in its canonical form: an ``int`` for a square input (so
    ``(256, 256)`` and ``256`` are the same model setting), else ``(height, width)``."""
    height, width = input_shape(input_size)
    return height if height == width else (height, width)


def parse_input_size(text: str) -> InputSize:
    """``"256"`` -> 256; ``"256x384"`` (height x width) -> ``(256, 384)``, as the CLI and the app's ``input_size``
    take it.

    Raises:
        ValueError: text that is not one or two whole numbers, or sides that :func:`input_shape` refuses.
    """
    parts = str(text).strip().lower().replace(" ", "").split("x")
    if 1 <= len(parts) <= 2 and all(p.isdigit() for p in parts):
        with contextlib.suppress(ValueError):  # sides input_shape refuses: the message below, naming the text
            return normalize_input_size(tuple(int(p) for p in parts) if len(parts) == 2 else int(parts[0]))
    raise ValueError(
        f"input size must be N or HEIGHTxWIDTH, each a positive multiple of {INPUT_MULTIPLE} "
        f"(e.g. 256 or 256x384), got {text!r}"
    )


def format_input_size(input_size: int | Sequence[int]) -> str:
    """``256`` -> ``"256x256"``, ``(256, 384)`` -> ``"256x384"`` (height x width), for logs and reports."""
    height, width = input_shape(input_size)
    return f"{height}x{width}"


IMAGE_MODE = "bilinear"
"""Interpolation of images (and probabilities)."""
LABEL_MODE = "nearest-exact"
"""Interpolation of labels: centre-aligned like bilinear with ``align_corners=False`` (torch's ``"nearest"`` shifts)."""


def interpolation_modes(keys: Sequence[Hashable], label_key: str, mode: str | Sequence[str] | None) -> tuple[str, ...]:
    """Interpolation per key: the given ``mode``, else nearest for the label and bilinear for images."""
    if mode is None:
        return tuple(LABEL_MODE if key == label_key else IMAGE_MODE for key in keys)
    return tuple(ensure_tuple_rep(mode, len(keys)))


def channels_identical(x: torch.Tensor) -> bool:
    """Whether a ``(C, H, W)`` tensor has several channels that are all equal (gray replicated to RGB)."""
    return x.shape[0] > 1 and all(torch.equal(x[0], x[c]) for c in range(1, x.shape[0]))


def _resize(x: torch.Tensor, shape_hw: Sequence[int], mode: str, anti_aliasing: bool = True) -> torch.Tensor:
    """Resize ``(C, h, w)`` to ``(C, H, W)``; integer inputs come back in their dtype (use a nearest mode for them)."""
    shape_hw = tuple(int(s) for s in shape_hw)
    if tuple(x.shape[-2:]) == shape_hw:
        return x
    if channels_identical(x):  # gray replicated to RGB: resize once
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
    """Resize whole images to the network input (a side or ``(H, W)``), ignoring the aspect ratio (as the method does).

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
        self.mode = interpolation_modes(self.keys, label_key, mode)
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
    out = _resize(x.float(), shape_hw, IMAGE_MODE)
    result, *_ = convert_to_dst_type(out, dst=probabilities, dtype=torch.float32)
    return result


def restore_to_original(
    prediction: np.ndarray | torch.Tensor,
    original: io.ImageGeometry | Mapping | Sequence[int],
    mode: str = "auto",
    threshold: float = DEFAULT_THRESHOLD,
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
        mask = _resize(x.long(), shape_hw, LABEL_MODE)
    else:
        mask = class_indices(_resize(x.float(), shape_hw, IMAGE_MODE), threshold, dim=0, keepdim=True)
    result, *_ = convert_to_dst_type(mask, dst=prediction, dtype=torch.int64)
    return result
