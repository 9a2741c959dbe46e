"""Training losses: the notebook's hybrid cross-entropy + soft Dice loss, and the paper's consistency term.

Both work on the networks' raw outputs (logits ``(B, C, H, W)``): ``C = 1`` is binary (sigmoid), ``C = K + 1`` is
multi-class (softmax). Labels are ``(B, 1, H, W)`` integer class indices.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from sscase_monai.probabilities import probabilities_from_logits

logger = logging.getLogger(__name__)

_ACTIVATIONS: tuple[str, ...] = ("sigmoid", "softmax")


class SegmentationLoss(nn.Module):
    """``bce_weight * cross-entropy + dice_weight * soft Dice loss`` on logits (MONAI ``DiceCELoss``).

    Binary (``out_channels == 1``): binary cross-entropy with logits plus the soft Dice loss of the sigmoid
    probabilities. As in the authors' Keras notebook, the Dice is computed once over the whole batch flattened
    (``1 - (2 * sum(p * y) + smooth) / (sum(p) + sum(y) + smooth)``, sums over every pixel of every image), not per
    image and then averaged: this is MONAI ``DiceLoss(batch=True, smooth_nr=smooth, smooth_dr=smooth)``.

    Multi-class (``out_channels = K + 1 > 1``): cross-entropy plus the soft Dice loss of the softmax probabilities
    against the one-hot target, each class's Dice pooled over the batch, then averaged over all ``K + 1`` channels
    (background included).

    Args:
        out_channels: channels of the network's output: 1 for binary, ``K + 1`` for ``K`` foreground classes.
        bce_weight: weight of the cross-entropy term (binary or categorical).
        dice_weight: weight of the soft Dice term.
        smooth: added to the Dice numerator and denominator (the notebook's ``smooth = 1e-6``).

    Raises:
        ValueError: ``out_channels < 1``, a negative weight, or a negative ``smooth``.
    """

    def __init__(
        self, out_channels: int = 1, bce_weight: float = 0.5, dice_weight: float = 0.5, smooth: float = 1e-6
    ) -> None:
        super().__init__()
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels!r}")
        if bce_weight < 0 or dice_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got bce_weight={bce_weight!r}, dice_weight={dice_weight!r}")
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth!r}")
        self.out_channels = out_channels
        self.binary = out_channels == 1
        self.loss = DiceCELoss(
            include_background=True,
            to_onehot_y=not self.binary,
            sigmoid=self.binary,
            softmax=not self.binary,
            batch=True,
            smooth_nr=smooth,
            smooth_dr=smooth,
            lambda_ce=bce_weight,
            lambda_dice=dice_weight,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The weighted loss, a scalar.

        Args:
            logits: network output ``(B, out_channels, H, W)``.
            target: class indices ``(B, 1, H, W)`` (or ``(B, H, W)``); for binary, values in {0, 1} (float or int).

        Returns:
            The scalar loss.

        Raises:
            ValueError: ``logits`` does not have ``out_channels`` channels, or shapes do not match.
        """
        if logits.ndim < 3 or logits.shape[1] != self.out_channels:
            raise ValueError(f"expected logits (B, {self.out_channels}, ...), got shape {tuple(logits.shape)}")
        if target.ndim == logits.ndim - 1:
            target = target.unsqueeze(1)
        if target.shape[0] != logits.shape[0] or target.shape[1] != 1 or target.shape[2:] != logits.shape[2:]:
            raise ValueError(
                f"expected target (B, 1, ...) matching logits {tuple(logits.shape)}, got shape {tuple(target.shape)}"
            )
        return self.loss(logits, target)


class ConsistencyLoss(nn.Module):
    """``weight * MSE`` between the predictions of two augmented views of the same (unlabelled) images.

    The paper's consistency term. The two predictions must already be spatially aligned: when a view was made with a
    geometric augmentation (flip, rotation, zoom), the caller inverts it on that view's prediction before calling this
    loss; photometric augmentations need no inversion. Gradients flow into both predictions.

    Args:
        weight: multiplies the mean squared error; 0 makes the loss 0 (the trainer's default is off).
        activation: how to turn the inputs into probabilities: ``None`` when they already are probabilities,
            ``"sigmoid"`` or ``"softmax"`` (over channels) when they are logits.

    Raises:
        ValueError: a negative weight or an unknown activation.
    """

    def __init__(self, weight: float = 1.0, activation: str | None = None) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight!r}")
        if activation is not None and activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be None or one of {_ACTIVATIONS}, got {activation!r}")
        self.weight = weight
        self.activation = activation

    def forward(self, prediction_a: torch.Tensor, prediction_b: torch.Tensor) -> torch.Tensor:
        """``weight * mean((p_a - p_b) ** 2)`` over every element.

        Args:
            prediction_a: predictions on the first view ``(B, C, H, W)``, aligned with ``prediction_b``.
            prediction_b: predictions on the second view, same shape.

        Returns:
            The scalar loss.

        Raises:
            ValueError: the shapes differ.
        """
        if prediction_a.shape != prediction_b.shape:
            raise ValueError(
                f"consistency needs aligned predictions of one shape, got {tuple(prediction_a.shape)} "
                f"and {tuple(prediction_b.shape)}"
            )
        activation = self.activation or "none"
        probabilities_a = probabilities_from_logits(prediction_a, activation)
        probabilities_b = probabilities_from_logits(prediction_b, activation)
        mse = F.mse_loss(probabilities_a, probabilities_b)
        return self.weight * mse
