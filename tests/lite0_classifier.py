"""Test scaffolding: EfficientNet-Lite0 with its ImageNet classifier head, to prove the bundled weights really load."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from monai.networks.layers.factories import Pool
from torch import nn

from sscase_monai.networks import EfficientNetSkipEncoder, PretrainedWeightsError, lite0_weights_path, read_state_dict

CLASSIFIER_KEYS = ("_fc.weight", "_fc.bias")


class EfficientNetClassifier(nn.Module):
    """An encoder's top activation followed by ImageNet's classifier head (average pool, dropout, ``fc``).

    Args:
        encoder: an ``EfficientNetSkipEncoder``.
        num_classes: number of classes of the linear layer.
        dropout_rate: dropout before the linear layer (active only in train mode).
    """

    def __init__(self, encoder: EfficientNetSkipEncoder, num_classes: int = 1000, dropout_rate: float = 0.2) -> None:
        super().__init__()
        self.encoder = encoder
        self.pool = Pool[Pool.ADAPTIVEAVG, 2](1)
        self.dropout = nn.Dropout(dropout_rate)
        self.fc = nn.Linear(encoder.out_channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes)`` for images ``(B, C, H, W)``."""
        return self.fc(self.dropout(self.pool(self.encoder(x)[-1]).flatten(1)))


def build_lite0_classifier(weights: str | os.PathLike | None = None) -> EfficientNetClassifier:
    """The full EfficientNet-Lite0 ImageNet classifier (pretrained encoder plus the weights' own ``_fc`` head), in
    eval mode. Inputs are RGB images in [0, 1]; the encoder normalises them as ``(x * 255 - 127) / 128``.

    Raises:
        PretrainedWeightsError: when the weights are unavailable, lack ``_fc`` or do not match.
    """
    path = Path(weights) if weights is not None else lite0_weights_path()
    encoder = EfficientNetSkipEncoder("efficientnet-lite0", pretrained=path)
    state = read_state_dict(path)
    missing = [key for key in CLASSIFIER_KEYS if key not in state]
    if missing:
        raise PretrainedWeightsError(f"{str(path)!r} has no classifier head: missing {missing}")
    classifier = EfficientNetClassifier(encoder, num_classes=state["_fc.weight"].shape[0])
    classifier.fc.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]}, strict=True)
    return classifier.eval()
