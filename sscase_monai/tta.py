"""Test-time augmentation (TTA): predict flipped and rotated copies, undo each transform, average the probabilities.

The method's views are identity, horizontal flip, vertical flip, rotate 90 and rotate 270
(:data:`sscase_monai.method.TTA_VIEWS`). All views of a batch go through the network in one forward pass (or in
chunks of ``max_batch_size``). The geometric views and their inverses (:func:`apply_view`, :func:`invert_view`)
are also the training consistency term's views.

Rotations by 90/270 degrees swap height and width, so they are only applied to square inputs (the method resizes
every image to 256x256). For a non-square input the rotations are skipped with a logged warning and the remaining
views are used; resize to square first if the rotations are wanted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from sscase_monai.method import TTA_VIEWS
from sscase_monai.probabilities import check_activation, probabilities_from_logits

logger = logging.getLogger(__name__)

ROTATIONS: frozenset[str] = frozenset({"rot90", "rot270"})
"""Views that need square inputs."""

Predictor = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _hflip(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=(-1,))


def _vflip(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=(-2,))


def _rot90(x: torch.Tensor) -> torch.Tensor:
    return torch.rot90(x, k=1, dims=(-2, -1))


def _rot270(x: torch.Tensor) -> torch.Tensor:
    return torch.rot90(x, k=3, dims=(-2, -1))


def _rot180(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=(-2, -1))


# name -> (transform applied to the image, its inverse applied to the prediction)
_TRANSFORMS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]] = {
    "identity": (_identity, _identity),
    "hflip": (_hflip, _hflip),
    "vflip": (_vflip, _vflip),
    "rot90": (_rot90, _rot270),
    "rot270": (_rot270, _rot90),
    "rot180": (_rot180, _rot180),
}

VIEWS: tuple[str, ...] = tuple(_TRANSFORMS)
"""Every view name: :data:`TTA_VIEWS` plus ``rot180`` (both flips)."""


def apply_view(name: str, x: torch.Tensor) -> torch.Tensor:
    """The view ``name`` of a batch ``(..., H, W)``."""
    return _TRANSFORMS[name][0](x)


def invert_view(name: str, x: torch.Tensor) -> torch.Tensor:
    """Undo the view ``name`` on a prediction made on that view, back onto the input's grid."""
    return _TRANSFORMS[name][1](x)


def resolve_tta_transforms(transforms: Sequence[str], height: int, width: int) -> tuple[str, ...]:
    """The views that will be used for an ``height x width`` input: rotations dropped when it is not square.

    Args:
        transforms: view names from :data:`TTA_VIEWS`.
        height: input height.
        width: input width.

    Returns:
        The usable view names, in the given order.

    Raises:
        ValueError: an unknown or repeated name, or no view left.
    """
    names = tuple(transforms)
    for name in names:
        if name not in _TRANSFORMS:
            raise ValueError(f"unknown TTA transform {name!r}; choose from {tuple(_TRANSFORMS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"TTA transforms must not repeat, got {names!r}")
    if height != width and ROTATIONS.intersection(names):
        logger.warning("TTA: input is %dx%d (not square); skipping rotations %s", height, width, sorted(ROTATIONS))
        names = tuple(n for n in names if n not in ROTATIONS)
    if not names:
        raise ValueError(f"no TTA transform left for a {height}x{width} input from {tuple(transforms)!r}")
    return names


def check_max_batch_size(max_batch_size: int | None) -> None:
    """Fail early on a ``max_batch_size`` that :func:`predict_in_chunks` cannot use.

    Args:
        max_batch_size: the most images per forward pass, or ``None`` for no limit.

    Raises:
        ValueError: ``max_batch_size`` is below 1.
    """
    if max_batch_size is not None and max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1 or None, got {max_batch_size!r}")


def predict_in_chunks(predictor: Predictor, batch: torch.Tensor, max_batch_size: int | None) -> torch.Tensor:
    """Run ``predictor`` on ``batch`` in chunks of at most ``max_batch_size`` images and join the outputs.

    Args:
        predictor: maps a batch to outputs with the same first dimension.
        batch: the inputs, batch first.
        max_batch_size: the most images per call; ``None`` sends the whole batch at once.

    Returns:
        The outputs, concatenated along the batch dimension.
    """
    if max_batch_size is None or batch.shape[0] <= max_batch_size:
        return predictor(batch)
    return torch.cat([predictor(chunk) for chunk in torch.split(batch, max_batch_size)], dim=0)


def tta_views(
    predictor: Predictor,
    images: torch.Tensor,
    transforms: Sequence[str] = TTA_VIEWS,
    activation: str = "auto",
    max_batch_size: int | None = None,
) -> torch.Tensor:
    """Probabilities of every TTA view, each transformed back onto the input's grid.

    Runs under ``torch.no_grad()``; put a network in eval mode before calling.

    Args:
        predictor: maps a batch ``(N, C_in, H, W)`` to outputs ``(N, C, H, W)`` (logits, or probabilities with
            ``activation="none"``), e.g. a network in eval mode.
        images: input batch ``(B, C_in, H, W)``.
        transforms: view names (see :data:`TTA_VIEWS`); rotations are skipped for non-square inputs.
        activation: ``"auto"`` (sigmoid for 1 output channel, softmax over channels otherwise), ``"sigmoid"``,
            ``"softmax"`` or ``"none"`` (the predictor already returns probabilities).
        max_batch_size: the most images per forward pass; ``None`` sends all ``V * B`` views in one pass.

    Returns:
        Aligned probabilities ``(B, V, C, H, W)``, views in the order used.

    Raises:
        ValueError: bad input shape, activation, transform names or ``max_batch_size``, or a predictor output whose
            batch size is not ``V * B``.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    check_activation(activation)
    check_max_batch_size(max_batch_size)
    names = resolve_tta_transforms(transforms, images.shape[-2], images.shape[-1])
    batch_size = images.shape[0]
    with torch.no_grad():
        batch = torch.cat([apply_view(name, images) for name in names], dim=0)
        output = predict_in_chunks(predictor, batch, max_batch_size)
        if output.ndim != 4 or output.shape[0] != len(names) * batch_size:
            raise ValueError(
                f"predictor returned shape {tuple(output.shape)} for {len(names) * batch_size} views; "
                "expected (views * B, C, H, W)"
            )
        probabilities = probabilities_from_logits(output, activation)
        aligned = [
            invert_view(name, view) for name, view in zip(names, torch.split(probabilities, batch_size), strict=True)
        ]
    return torch.stack(aligned, dim=1)


def tta_predict(
    predictor: Predictor,
    images: torch.Tensor,
    transforms: Sequence[str] = TTA_VIEWS,
    activation: str = "auto",
    max_batch_size: int | None = None,
) -> torch.Tensor:
    """TTA prediction: the mean of the aligned view probabilities (see :func:`tta_views` for the arguments).

    Returns:
        Probabilities ``(B, C, H, W)``.
    """
    return tta_views(predictor, images, transforms, activation, max_batch_size).mean(dim=1)


def tta_disagreement(views: torch.Tensor) -> torch.Tensor:
    """How much the TTA views disagree, per image: the mean over pixels and channels of the variance across views.

    The variance is the population variance (divide by ``V``) of each pixel's probability over the views; for
    probabilities it lies in [0, 0.25]. 0 means every view predicts the same map; a single view scores 0.

    Args:
        views: aligned probabilities ``(B, V, C, ...)`` from :func:`tta_views`.

    Returns:
        Scores ``(B,)``, higher = more uncertain.

    Raises:
        ValueError: ``views`` has fewer than 3 dimensions.
    """
    if views.ndim < 3:
        raise ValueError(f"views must be (B, V, C, ...), got shape {tuple(views.shape)}")
    return views.var(dim=1, correction=0).flatten(start_dim=1).mean(dim=1)
