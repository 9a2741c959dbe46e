"""Helpers for tests that need a real model file or a real image file on disk (without training anything)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from sscase_monai.model_files import ModelSpec, save_model


def constant_model(path: Path, spec: ModelSpec, bias: list[float]) -> Path:
    """A real network whose output layer ignores its input: every pixel gets the logits ``bias``."""
    network = spec.build_network()
    with torch.no_grad():
        network.head.output.weight.zero_()
        network.head.output.bias.copy_(torch.tensor(bias))
    return save_model(path, network, spec)


def write_image(
    path: Path,
    array: np.ndarray,
    spacing: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
    *,
    volume: bool = False,
) -> Path:
    """Write ``array`` with SimpleITK (the format from the suffix), creating the folder.

    Args:
        path: the file to write.
        array: ``(H, W)`` (or ``(H, W, 3)``) pixels.
        spacing: ITK order (columns, rows); with ``volume`` the slice spacing 1.0 is added.
        origin: ITK origin, as many numbers as the image has dimensions.
        direction: ITK direction matrix, flattened.
        volume: write a ``W x H x 1`` single-slice volume instead of a 2-D image.

    Returns:
        ``path``.
    """
    image = sitk.GetImageFromArray(array[None] if volume else array)
    if spacing is not None:
        image.SetSpacing(tuple(spacing) + ((1.0,) if volume else ()))
    if origin is not None:
        image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path
