"""Per-image uncertainty scores for active learning (the MONAI Label app ranks unlabelled images with these).

- :func:`mc_dropout_entropy`: Monte-Carlo dropout. The network predicts each image several times with its dropout
  layers active (everything else, batch norm included, in eval mode); the score is the mean over pixels of the
  entropy of the mean prediction (predictive entropy), in nats.
- :func:`tta_uncertainty`: disagreement between test-time-augmentation views
  (:func:`sscase_monai.tta.tta_disagreement`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from sscase_monai.method import TTA_VIEWS
from sscase_monai.probabilities import check_activation, probabilities_from_logits
from sscase_monai.tta import Predictor, check_max_batch_size, predict_in_chunks, tta_disagreement, tta_views

logger = logging.getLogger(__name__)

__all__ = ["mc_dropout_entropy", "predictive_entropy", "tta_disagreement", "tta_uncertainty"]

_DROPOUT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)

_ENTROPY_EPS = 1e-12


@contextlib.contextmanager
def _mc_dropout_mode(model: nn.Module) -> Iterator[int]:
    """Inside: the model in eval mode except its dropout layers (train mode). Yields the number of dropout layers.

    Every module's own ``training`` flag is restored on exit, whatever it was before.
    """
    modes = {module: module.training for module in model.modules()}
    model.eval()
    dropouts = [m for m in model.modules() if isinstance(m, _DROPOUT_TYPES)]
    for module in dropouts:
        module.train()
    try:
        yield len(dropouts)
    finally:
        for module, training in modes.items():
            module.training = training


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Inside: the CPU generator (and ``device``'s, when CUDA) seeded with ``seed``; their states restored on exit."""
    if seed is None:
        yield
        return
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.default_generator.manual_seed(seed)
        if cuda_devices:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def predictive_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Per-pixel entropy (nats) of probability maps ``(B, C, ...)``.

    One channel is a Bernoulli foreground probability: ``-(p ln p + (1 - p) ln(1 - p))``, at most ``ln 2``. Several
    channels are a categorical distribution over channels: ``-sum_c p_c ln p_c``, at most ``ln C``.

    Args:
        probabilities: ``(B, C, ...)`` values in [0, 1].

    Returns:
        Entropy ``(B, ...)`` (channel dimension removed).
    """
    p = probabilities.clamp(_ENTROPY_EPS, 1.0)
    if probabilities.shape[1] == 1:
        q = (1.0 - probabilities).clamp(_ENTROPY_EPS, 1.0)
        return -(probabilities * p.log() + (1.0 - probabilities) * q.log())[:, 0]
    return -(probabilities * p.log()).sum(dim=1)


def mc_dropout_entropy(
    model: nn.Module,
    images: torch.Tensor,
    num_samples: int = 8,
    activation: str = "auto",
    seed: int | None = None,
    max_batch_size: int | None = None,
) -> torch.Tensor:
    """MC-dropout predictive entropy per image: the pixel mean of the entropy of the mean stochastic prediction.

    The samples are batched: the ``B`` images are repeated ``num_samples`` times and predicted in one forward pass (or
    chunks of ``max_batch_size``); each copy draws its own dropout mask. Only ``nn.Dropout*`` layers run in train
    mode, batch norm uses its running statistics, and every module's mode is restored afterwards. A model without
    dropout gives the deterministic prediction's entropy (with a logged warning).

    Args:
        model: network returning logits ``(N, C, H, W)`` (or probabilities with ``activation="none"``).
        images: input batch ``(B, C_in, H, W)`` on the model's device.
        num_samples: stochastic forward passes per image.
        activation: ``"auto"`` (sigmoid for 1 channel, softmax otherwise), ``"sigmoid"``, ``"softmax"``, ``"none"``.
        seed: when given, the dropout masks are drawn from this seed without disturbing the global random state
            (the same seed, model and input give the same score).
        max_batch_size: the most images per forward pass; ``None`` = all ``num_samples * B`` at once.

    Returns:
        Scores ``(B,)`` in nats (binary: in [0, ln 2]; ``C`` classes: in [0, ln C]), higher = more uncertain.

    Raises:
        ValueError: bad ``images`` shape, ``num_samples``, ``activation`` or ``max_batch_size``.
    """
    if images.ndim < 3:
        raise ValueError(f"images must be (B, C, ...), got shape {tuple(images.shape)}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples!r}")
    check_activation(activation)
    check_max_batch_size(max_batch_size)
    batch_size = images.shape[0]
    repeated = images.repeat(num_samples, *([1] * (images.ndim - 1)))  # sample-major: [s0 b0..bB, s1 b0..bB, ...]
    with _seeded(seed, images.device), _mc_dropout_mode(model) as dropout_layers, torch.no_grad():
        if dropout_layers == 0:
            logger.warning("mc_dropout_entropy: the model has no dropout layer; the score is deterministic")
        probabilities = probabilities_from_logits(predict_in_chunks(model, repeated, max_batch_size), activation)
    mean_probability = probabilities.reshape(num_samples, batch_size, *probabilities.shape[1:]).mean(dim=0)
    return predictive_entropy(mean_probability).flatten(start_dim=1).mean(dim=1)


def tta_uncertainty(
    predictor: Predictor,
    images: torch.Tensor,
    transforms: Sequence[str] = TTA_VIEWS,
    activation: str = "auto",
    max_batch_size: int | None = None,
) -> torch.Tensor:
    """TTA disagreement per image: :func:`sscase_monai.tta.tta_disagreement` of :func:`sscase_monai.tta.tta_views`.

    Args:
        predictor: maps ``(N, C_in, H, W)`` to outputs ``(N, C, H, W)``; put a network in eval mode first.
        images: input batch ``(B, C_in, H, W)``.
        transforms: TTA view names.
        activation: see :func:`sscase_monai.tta.tta_views`.
        max_batch_size: the most images per forward pass.

    Returns:
        Scores ``(B,)`` (mean per-pixel variance across views, in [0, 0.25]), higher = more uncertain.
    """
    return tta_disagreement(tta_views(predictor, images, transforms, activation, max_batch_size))
