"""Choosing which unlabelled images get a pseudo-label (the method's stage-3 selection rule).

The method's numbers are :data:`sscase_monai.method.PSEUDO_LABELS` (the defaults here). Binary rule (after stage 2,
on each unlabelled image's predicted probability map):

1. the pseudo-label is the prediction binarised at ``threshold`` (foreground where ``p > threshold``);
2. a pixel is confident when ``p >= confidence`` or ``p <= 1 - confidence``;
3. keep the image when MORE than ``min_confident_fraction`` of its pixels are confident (strict: a share exactly
   equal is rejected) AND the pseudo-label has AT LEAST ``min_foreground_pixels`` foreground pixels (inclusive).

Multi-class (softmax, ``K + 1`` channels): the pseudo-label is the argmax, a pixel is confident when its largest
class probability is ``>= confidence``, and foreground pixels are those whose argmax is not 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sscase_monai.method import PSEUDO_LABELS, PseudoLabelConfig
from sscase_monai.probabilities import class_indices

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PseudoLabelCandidate:
    """The selection rule's verdict on one unlabelled image.

    Attributes:
        index: position of the image in the input.
        mask: the pseudo-label, ``(1, H, W)`` int64 class indices, on the input's device.
        confident_fraction: fraction of pixels that are confident, in [0, 1].
        foreground_pixels: number of foreground pixels in ``mask``.
        accepted: whether the image passes both tests.
    """

    index: int
    mask: torch.Tensor
    confident_fraction: float
    foreground_pixels: int
    accepted: bool


def _mask_and_confident(probability: torch.Tensor, threshold: float, confidence: float) -> tuple[torch.Tensor, int]:
    """Pseudo-label ``(1, H, W)`` and the number of confident pixels for one ``(C, H, W)`` probability map."""
    mask = class_indices(probability, threshold, dim=0, keepdim=True)
    if probability.shape[0] == 1:
        confident = (probability >= confidence) | (probability <= 1.0 - confidence)
    else:
        confident = probability.amax(dim=0, keepdim=True) >= confidence
    return mask, int(confident.sum())


def select_confident_pseudo_labels(
    probabilities: torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray],
    threshold: float = PSEUDO_LABELS.threshold,
    confidence: float = PSEUDO_LABELS.confidence,
    min_confident_fraction: float = PSEUDO_LABELS.min_confident_fraction,
    min_foreground_pixels: int = PSEUDO_LABELS.min_foreground_pixels,
) -> list[PseudoLabelCandidate]:
    """Apply the method's pseudo-label rule to each image (see the module docstring).

    Args:
        probabilities: ``(N, C, H, W)`` probabilities (``C = 1``: sigmoid foreground probability; ``C > 1``: softmax
            over classes), or a sequence of ``(C, H, W)`` maps of different sizes.
        threshold: binary only: foreground where ``p > threshold``.
        confidence: a pixel is confident when ``p >= confidence`` or ``p <= 1 - confidence`` (binary), or when its
            largest class probability is ``>= confidence`` (multi-class).
        min_confident_fraction: keep only when the confident fraction is strictly greater than this.
        min_foreground_pixels: keep only when the mask has at least this many foreground pixels.

    Returns:
        One :class:`PseudoLabelCandidate` per image, in input order; ``[c for c in result if c.accepted]`` are the
        pseudo-labels to train on.

    Raises:
        ValueError: a parameter out of range, or a map that is not ``(C, H, W)``.
    """
    PseudoLabelConfig(threshold, confidence, min_confident_fraction, min_foreground_pixels)  # checks the ranges
    if isinstance(probabilities, np.ndarray | torch.Tensor) and probabilities.ndim != 4:
        raise ValueError(f"probabilities must be (N, C, H, W), got shape {tuple(probabilities.shape)}")
    candidates = []
    for index, probability in enumerate(probabilities):
        probability = torch.as_tensor(probability)
        if probability.ndim != 3:
            raise ValueError(f"probability map {index} must be (C, H, W), got shape {tuple(probability.shape)}")
        mask, confident = _mask_and_confident(probability.detach(), threshold, confidence)
        # Python division of exact counts: a share exactly at the limit (e.g. 0.9) equals the literal and is rejected.
        confident_fraction = confident / mask.numel() if mask.numel() else 0.0
        foreground = int((mask != 0).sum())
        accepted = confident_fraction > min_confident_fraction and foreground >= min_foreground_pixels
        candidates.append(PseudoLabelCandidate(index, mask, confident_fraction, foreground, accepted))
    kept = sum(c.accepted for c in candidates)
    logger.info("pseudo-labels: kept %d of %d images", kept, len(candidates))
    return candidates
