"""Network outputs -> class probabilities -> class masks: the one place that decides how.

- Logits become probabilities by a sigmoid when the network has one output channel (binary: the foreground
  probability) and by a softmax over channels otherwise (``K + 1`` classes with background).
- Probabilities become class indices by ``p > threshold`` for one channel (the method binarises at 0.5) and by the
  argmax over channels otherwise.

Training (validation Dice, consistency loss), inference, TTA, uncertainty scores and pseudo-labels all go through
these two functions, so they cannot disagree about what the network predicted.
"""

from __future__ import annotations

import numpy as np
import torch

ACTIVATIONS: tuple[str, ...] = ("auto", "sigmoid", "softmax", "none")
"""How outputs become probabilities: ``auto`` = sigmoid for 1 channel, softmax for more; ``none``: already are."""

DEFAULT_THRESHOLD = 0.5
"""Binary foreground where the probability is above this (the method's)."""


def check_activation(activation: str) -> None:
    """Fail early on an activation name that :func:`probabilities_from_logits` would refuse.

    Args:
        activation: the name to check.

    Raises:
        ValueError: ``activation`` is not one of :data:`ACTIVATIONS`.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def probabilities_from_logits(logits: torch.Tensor, activation: str = "auto", dim: int = 1) -> torch.Tensor:
    """Class probabilities from network outputs.

    Args:
        logits: outputs with channels along ``dim``, e.g. ``(B, C, H, W)``.
        activation: one of :data:`ACTIVATIONS`.
        dim: the channel dimension.

    Returns:
        Probabilities, same shape.

    Raises:
        ValueError: an unknown ``activation``.
    """
    if activation == "auto":
        activation = "sigmoid" if logits.shape[dim] == 1 else "softmax"
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "softmax":
        return torch.softmax(logits, dim=dim)
    check_activation(activation)
    return logits  # activation == "none"


def class_indices(
    probabilities: torch.Tensor | np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    dim: int = 0,
    keepdim: bool = False,
) -> torch.Tensor | np.ndarray:
    """Class index of every pixel: ``p > threshold`` for one channel, else the argmax over channels.

    Args:
        probabilities: probabilities with channels along ``dim``, e.g. ``(C, H, W)`` or ``(B, C, H, W)``.
        threshold: foreground threshold for a single channel.
        dim: the channel dimension.
        keepdim: keep ``dim`` as a dimension of size 1.

    Returns:
        int64 class indices, numpy or torch like the input.
    """
    if isinstance(probabilities, torch.Tensor):
        if probabilities.shape[dim] == 1:
            indices = (probabilities > threshold).long()
            return indices if keepdim else indices.squeeze(dim)
        return probabilities.argmax(dim=dim, keepdim=keepdim)
    p = np.asarray(probabilities)
    if p.shape[dim] == 1:
        indices = (p > threshold).astype(np.int64)
        return indices if keepdim else indices.squeeze(dim)
    indices = p.argmax(axis=dim)
    return np.expand_dims(indices, dim) if keepdim else indices
