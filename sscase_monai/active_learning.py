"""Active learning: the strategies that pick the next images to label, and the scores they rank by.

Every strategy lives in one registry, :data:`STRATEGY_REGISTRY` (name, description, kind, the image-info key its
score is stored under, its score function); the MONAI Label app (its strategies and scoring methods),
``sscase-monai simulate-al``, the simulation (:mod:`sscase_monai.al_simulation`) and ``bench/`` all read it. Kinds:

- ``"random"``: a seeded random draw; needs no model.
- ``"uncertainty"``: highest score first; the score is a function of the model and a batch of images
  (higher = the model is less sure, so a label there teaches it more). ``epistemic``: MC-dropout predictive entropy
  (:func:`sscase_monai.uncertainty.mc_dropout_entropy`); ``tta``: disagreement between the method's test-time views
  (:func:`sscase_monai.uncertainty.tta_uncertainty`).
- ``"coverage"``: ``diversity``, core-set / k-center greedy (:func:`k_center_greedy`) on the encoder's globally pooled
  deepest features (:func:`encoder_features`): each pick is the unlabelled image farthest (cosine distance) from
  every labelled image and every image picked before it.
- ``"hybrid"``: ``hybrid``, uncertainty-weighted k-center greedy: the same picks as ``"coverage"`` but each
  candidate's distance is multiplied by its uncertainty weight (:func:`uncertainty_weights`: the rank of its score,
  in (0, 1]), so an image is picked for being both far from what is labelled and uncertain.

Adding an uncertainty or hybrid strategy is one score function (``(network, images, num_samples, seed) -> (B,)
scores``) and one :class:`ActiveLearningStrategy` entry in :data:`STRATEGY_REGISTRY`.

Scores are computed on 2-D images through the same preprocessing as inference (MONAI Label's own epistemic scoring
mishandles 2-D inputs). Torch is imported when a score is computed, not with this module, so the command line's
help (which lists the strategies) stays quick.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

    from sscase_monai.inference import Predictor

logger = logging.getLogger(__name__)

ImageScore = Callable[["nn.Module", "torch.Tensor", int, int], "torch.Tensor"]
"""``(network, images (B, C, H, W), num_samples, seed) -> scores (B,)``, higher = label first."""

StrategyKind = Literal["random", "uncertainty", "coverage", "hybrid"]
KINDS: tuple[str, ...] = ("random", "uncertainty", "coverage", "hybrid")
SCORED_KINDS: tuple[str, ...] = ("uncertainty", "hybrid")
"""The kinds that need a per-image score function."""
FEATURE_KINDS: tuple[str, ...] = ("coverage", "hybrid")
"""The kinds that pick by k-center greedy on encoder features."""


def epistemic_score(network: nn.Module, images: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    """MC-dropout predictive entropy of each image (:func:`sscase_monai.uncertainty.mc_dropout_entropy`)."""
    from sscase_monai.uncertainty import mc_dropout_entropy

    return mc_dropout_entropy(network, images, num_samples=num_samples, seed=seed)


def tta_score(network: nn.Module, images: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    """Disagreement of the method's test-time views (:func:`sscase_monai.uncertainty.tta_uncertainty`);
    deterministic, so ``num_samples`` and ``seed`` are unused."""
    from sscase_monai.uncertainty import tta_uncertainty

    return tta_uncertainty(network, images)


@dataclass(frozen=True)
class ActiveLearningStrategy:
    """One way to pick the next images to label.

    Attributes:
        name: the name the app, ``simulate-al`` and ``bench/`` use (MONAI Label's strategy and scoring method name).
        description: one line, shown by Slicer and in help texts.
        kind: ``"random"``, ``"uncertainty"`` (highest :attr:`score` first), ``"coverage"`` (k-center greedy on
            encoder features) or ``"hybrid"`` (k-center greedy with each distance weighted by the :attr:`score`).
        key: the image-info key the app's scoring method writes the score under (``None``: not scored).
        score: the per-image score of an ``"uncertainty"`` or ``"hybrid"`` strategy.
    """

    name: str
    description: str
    kind: StrategyKind
    key: str | None = None
    score: ImageScore | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"strategy kind must be one of {KINDS}, got {self.kind!r}")
        if (self.kind in SCORED_KINDS) != (self.score is not None):
            raise ValueError(f"strategy {self.name!r}: a score function is needed by, and only by, {SCORED_KINDS}")
        if self.needs_model and not self.key:
            raise ValueError(f"strategy {self.name!r} needs a key to store its scores under")

    @property
    def needs_model(self) -> bool:
        """Whether picking needs the current model (every kind but ``"random"``)."""
        return self.kind != "random"


STRATEGY_REGISTRY: dict[str, ActiveLearningStrategy] = {
    s.name: s
    for s in (
        ActiveLearningStrategy("random", "A random unlabelled image", "random"),
        ActiveLearningStrategy(
            "epistemic",
            "Most uncertain under MC dropout (predictive entropy)",
            "uncertainty",
            key="epistemic_entropy",
            score=epistemic_score,
        ),
        ActiveLearningStrategy(
            "tta",
            "Most disagreement between test-time augmentation views",
            "uncertainty",
            key="tta_disagreement",
            score=tta_score,
        ),
        ActiveLearningStrategy(
            "diversity",
            "Farthest from every labelled image (encoder features, core-set)",
            "coverage",
            key="diversity_distance",
        ),
        ActiveLearningStrategy(
            "hybrid",
            "Far from every labelled image and uncertain (core-set weighted by TTA disagreement)",
            "hybrid",
            key="hybrid_weighted_distance",
            score=tta_score,
        ),
    )
}
"""Every active-learning strategy by name, ``random`` first."""

STRATEGIES: tuple[str, ...] = tuple(STRATEGY_REGISTRY)
"""The strategy names, in registry order."""

SCORED_STRATEGIES: tuple[ActiveLearningStrategy, ...] = tuple(s for s in STRATEGY_REGISTRY.values() if s.needs_model)
"""The strategies that rank by a model's score (the app's scoring methods and score-based strategies)."""


LABEL_TARGETS: tuple[float, ...] = (0.97, 0.99)
"""Shares of the full-data Dice at which ``simulate-al`` reports how many labels each strategy needed."""


def get_strategy(name: str) -> ActiveLearningStrategy:
    """The registry's strategy called ``name``.

    Raises:
        ValueError: an unknown name (the message lists the choices).
    """
    try:
        return STRATEGY_REGISTRY[name]
    except KeyError:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}") from None


def score_images(
    predictor: Predictor,
    images: Iterable[str | os.PathLike],
    strategy: str = "epistemic",
    num_samples: int = 8,
    seed: int = 0,
) -> dict[str, float]:
    """Uncertainty score of each image file (unreadable files are logged and left out).

    Args:
        predictor: the current model with its preprocessing.
        images: image files.
        strategy: a strategy of :data:`STRATEGY_REGISTRY` with a score function (``"epistemic"``, ``"tta"``,
            ``"hybrid"``).
        num_samples: MC-dropout passes per image.
        seed: seed for the dropout masks (scores are reproducible).

    Returns:
        ``{path: score}``.

    Raises:
        ValueError: an unknown strategy, or one that does not score images one by one.
    """
    score = get_strategy(strategy).score
    if score is None:
        uncertainty = tuple(s.name for s in STRATEGY_REGISTRY.values() if s.score is not None)
        raise ValueError(f"strategy {strategy!r} does not score images one by one; these do: {uncertainty}")
    scores: dict[str, float] = {}
    for image in images:
        try:
            tensor, _, _ = predictor.load_image(image)
        except (ValueError, RuntimeError) as e:  # Compose wraps a transform's ImageReadError in a RuntimeError
            logger.warning("not scoring %s: %s", image, e.__cause__ or e)
            continue
        scores[str(image)] = float(score(predictor.network, tensor[None].to(predictor.device), num_samples, seed)[0])
    return scores


@dataclass(frozen=True)
class Candidate:
    """An unlabelled image with its score (``None``: not scored yet) and when it was last served (epoch seconds)."""

    image_id: str
    score: float | None
    served_at: float = 0.0


def select_next(candidates: Iterable[Candidate], now: float, cooldown_seconds: float = 600.0) -> Candidate | None:
    """The unlabelled image to label next: highest score first, not served within ``cooldown_seconds``.

    Recently served images (someone may be labelling them) go after the others; images without a score go after
    scored ones; ties break by image id, so the choice is deterministic.
    """

    def rank(c: Candidate) -> tuple[bool, bool, float, str]:
        recently_served = now - c.served_at < cooldown_seconds
        unscored = c.score is None or math.isnan(c.score)
        return recently_served, unscored, -(c.score or 0.0), c.image_id

    ordered = sorted(candidates, key=rank)
    return ordered[0] if ordered else None


def candidates_from_info(infos: Mapping[str, Mapping], key: str, strategy: str) -> list[Candidate]:
    """Candidates from MONAI Label datastore image infos (score under ``key``, served time under ``strategy``)."""
    out = []
    for image_id, info in infos.items():
        score = info.get(key)
        served = info.get("strategy", {}).get(strategy, {}).get("ts", 0)
        out.append(Candidate(image_id, None if score is None else float(score), float(served)))
    return out


def model_version(path: str | os.PathLike) -> str:
    """A string that changes whenever the model file changes (scores are tied to the model that made them)."""
    stat = os.stat(path)
    return f"{os.path.basename(path)}@{stat.st_mtime_ns}"


def encoder_features(predictor: Predictor, images: Iterable[str | os.PathLike], batch_size: int = 8) -> np.ndarray:
    """The encoder's deepest feature map, averaged over space and L2-normalised, of each image file.

    Images go through the predictor's preprocessing (as for inference); the network must have an ``encoder``
    returning a list of feature maps, deepest last (SS_CASE_UNet's EfficientNet).

    Returns:
        ``(N, D)`` float32 unit vectors, in the order of ``images``.

    Raises:
        ValueError: a network without an encoder; an unreadable image.
    """
    import torch

    encoder = getattr(predictor.network, "encoder", None)
    if encoder is None:
        raise ValueError(f"diversity needs a network with an encoder, got {type(predictor.network).__name__}")
    paths = list(images)
    out = []
    for start in range(0, len(paths), batch_size):
        batch = torch.stack([predictor.load_image(p)[0] for p in paths[start : start + batch_size]])
        with torch.no_grad():
            deepest = encoder(batch.to(predictor.device))[-1].float()
        out.append(torch.nn.functional.normalize(deepest.mean(dim=(2, 3)), dim=1).cpu())
    if not out:
        return np.zeros((0, 0), np.float32)
    return torch.cat(out).numpy()


def nearest_center_distance(candidates: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Cosine distance of each candidate row to its nearest center row (``inf`` when there is no center).

    Both arrays hold unit vectors (``(N, D)`` and ``(M, D)``, as :func:`encoder_features` gives).
    """
    if len(centers) == 0:
        return np.full(len(candidates), np.inf, np.float32)
    return (1.0 - candidates @ centers.T).min(axis=1).clip(min=0.0)


def coverage_distance(candidates: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """How far each candidate is from what is labelled: :func:`nearest_center_distance` to ``centers``; without a
    center, the distance to the candidates' mean direction (the most atypical image first)."""
    if len(centers):
        return nearest_center_distance(candidates, centers)
    if len(candidates) == 0:
        return np.zeros(0, np.float32)
    mean = candidates.mean(axis=0, keepdims=True)
    return nearest_center_distance(candidates, mean / max(float(np.linalg.norm(mean)), 1e-12))


def uncertainty_weights(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """Each score's rank among ``scores`` as a weight in (0, 1]: the most uncertain image 1, the least ``1 / N``.

    Ranks rather than the raw scores, so that a few outlying scores (an unreadable scan, a blank frame) cannot
    outweigh every distance; ties share their mean rank. Used by the ``"hybrid"`` strategies.
    """
    from scipy.stats import rankdata

    values = np.asarray(scores, np.float64)
    if values.ndim != 1 or not np.all(np.isfinite(values)):
        raise ValueError(f"scores must be a 1-D array of finite numbers, got {values!r}")
    if len(values) == 0:
        return np.zeros(0, np.float32)
    return (rankdata(values) / len(values)).astype(np.float32)


def k_center_greedy(
    candidates: np.ndarray, centers: np.ndarray, k: int, weights: np.ndarray | None = None
) -> list[int]:
    """Core-set selection: ``k`` candidate indices, each the farthest from the centers and the earlier picks.

    Args:
        candidates: ``(N, D)`` unit feature vectors of the unlabelled images.
        centers: ``(M, D)`` unit feature vectors of the labelled images (``M`` may be 0: the first pick is then the
            candidate farthest from the candidates' mean direction).
        k: how many to pick (at most ``N``).
        weights: ``(N,)`` non-negative weights (uncertainty-weighted k-center): each pick maximises weight times
            distance; ``None``: plain k-center.

    Returns:
        Indices into ``candidates``, in pick order.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k!r}")
    if weights is not None and (np.shape(weights) != (len(candidates),) or np.any(np.asarray(weights) < 0)):
        raise ValueError(f"weights must be {len(candidates)} non-negative numbers, got {weights!r}")
    k = min(k, len(candidates))
    if k == 0:
        return []
    distance = coverage_distance(candidates, centers)
    picks: list[int] = []
    for _ in range(k):
        index = int(np.argmax(distance if weights is None else distance * weights))
        picks.append(index)
        distance = np.minimum(distance, nearest_center_distance(candidates, candidates[index : index + 1]))
        distance[picks] = -1.0
    return picks


def select_batch(
    strategy: str,
    predictor: Predictor | None,
    pool: Sequence[str],
    labelled: Sequence[str],
    k: int,
    seed: int = 0,
    num_samples: int = 8,
) -> list[str]:
    """The ``k`` pool images a strategy would send for labelling next.

    Args:
        strategy: a name in :data:`STRATEGY_REGISTRY`: ``"random"`` draws; an ``"uncertainty"`` strategy ranks by
            :func:`score_images`, highest first; ``"coverage"`` (``diversity``) is :func:`k_center_greedy` on
            :func:`encoder_features`; ``"hybrid"`` is the same weighted by :func:`uncertainty_weights` of its scores.
        predictor: the current model (not needed for ``"random"``).
        pool: unlabelled image paths.
        labelled: labelled image paths (the centers of ``"diversity"``).
        k: how many to pick (at most ``len(pool)``).
        seed: seed of ``"random"`` and of the MC-dropout masks.
        num_samples: MC-dropout passes per image.

    Returns:
        Paths from ``pool``, in pick order.
    """
    chosen = get_strategy(strategy)
    pool = [str(p) for p in pool]
    k = min(k, len(pool))
    if chosen.kind == "random":
        order = np.random.default_rng(seed).permutation(len(pool))
        return [pool[i] for i in order[:k]]
    if predictor is None:
        raise ValueError(f"strategy {strategy!r} needs the current model")
    scores = {}
    if chosen.score is not None:
        scores = score_images(predictor, pool, strategy=strategy, num_samples=num_samples, seed=seed)
    if chosen.kind not in FEATURE_KINDS:
        return sorted(scores, key=lambda path: (-scores[path], path))[:k]
    if chosen.score is not None:
        pool = [p for p in pool if p in scores]  # unreadable images were left out (and logged) by score_images
    features = encoder_features(predictor, pool + [str(p) for p in labelled])
    weights = uncertainty_weights([scores[p] for p in pool]) if chosen.score is not None else None
    picks = k_center_greedy(features[: len(pool)], features[len(pool) :], k, weights)
    return [pool[i] for i in picks]
