"""Active learning: score unlabelled images by model uncertainty, and pick the next one to label.

Two scores (higher = the model is less sure, so a label there teaches it more):

- ``"mc_dropout"``: predictive entropy under Monte-Carlo dropout (:func:`sscase_monai.uncertainty.mc_dropout_entropy`).
- ``"tta"``: disagreement between the method's test-time views (:func:`sscase_monai.uncertainty.tta_uncertainty`).

Both scores live in :mod:`sscase_monai.uncertainty`; this module only runs them over image files and ranks.

Scores are computed on 2-D images through the same preprocessing as inference (MONAI Label's own epistemic scoring
mishandles 2-D inputs).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sscase_monai.inference import Predictor
from sscase_monai.uncertainty import mc_dropout_entropy, tta_uncertainty

logger = logging.getLogger(__name__)

SCORING_METHODS: tuple[str, ...] = ("mc_dropout", "tta")


def score_images(
    predictor: Predictor,
    images: Iterable[str | os.PathLike],
    method: str = "mc_dropout",
    num_samples: int = 8,
    seed: int = 0,
) -> dict[str, float]:
    """Uncertainty score of each image file (unreadable files are logged and left out).

    Args:
        predictor: the current model with its preprocessing.
        images: image files.
        method: ``"mc_dropout"`` or ``"tta"``.
        num_samples: MC-dropout passes per image.
        seed: seed for the dropout masks (scores are reproducible).

    Returns:
        ``{path: score}``.
    """
    if method not in SCORING_METHODS:
        raise ValueError(f"method must be one of {SCORING_METHODS}, got {method!r}")
    scores: dict[str, float] = {}
    for image in images:
        try:
            tensor, _, _ = predictor.load_image(image)
        except (ValueError, RuntimeError) as e:  # Compose wraps a transform's ImageReadError in a RuntimeError
            logger.warning("not scoring %s: %s", image, e.__cause__ or e)
            continue
        batch = tensor[None].to(predictor.device)
        if method == "mc_dropout":
            score = mc_dropout_entropy(predictor.network, batch, num_samples=num_samples, seed=seed)
        else:
            score = tta_uncertainty(predictor.network, batch)
        scores[str(image)] = float(score[0])
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
