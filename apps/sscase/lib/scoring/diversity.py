"""Scoring: how far each unlabelled image is from every labelled one in the model's encoder feature space (weighted
by the image's uncertainty for a ``"hybrid"`` strategy)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence

import numpy as np
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from sscase_monai.active_learning import (
    ActiveLearningStrategy,
    coverage_distance,
    encoder_features,
    model_version,
    score_images,
    uncertainty_weights,
)
from sscase_monai.inference import Predictor

from .model import no_model_answer, scoring_model

logger = logging.getLogger(__name__)


class DiversityScoring(ScoringMethod):
    """Write the cosine distance to the nearest labelled image (encoder features) into each unlabelled image's info.

    The ``diversity`` strategy then serves the farthest image: k-center greedy (core-set) one label at a time, as
    :func:`sscase_monai.active_learning.k_center_greedy` does for a batch. A ``"hybrid"`` strategy (``hybrid``)
    multiplies each distance by the image's :func:`~sscase_monai.active_learning.uncertainty_weights` (its score
    function's rank among the unlabelled images), as the weighted k-center does for a batch. Scores are redone when
    the model file or the set of labelled images changes; features and uncertainty scores are kept in memory per
    model file.

    Args:
        path: candidate model files, lowest priority first (the last existing one is used).
        strategy: the registry entry (``sscase_monai.active_learning.STRATEGY_REGISTRY``, a ``"coverage"`` or
            ``"hybrid"`` one) whose key the distance is written under.
        num_samples: MC-dropout passes per image (a hybrid strategy whose score is MC dropout).
    """

    def __init__(self, path: Sequence[str | None], strategy: ActiveLearningStrategy, num_samples: int = 8) -> None:
        super().__init__(strategy.description + " (encoder features, current model)")
        self.path = [p for p in path if p]
        self.strategy = strategy
        self.key = strategy.key
        self.num_samples = num_samples
        self._features: dict[str, np.ndarray] = {}
        self._uncertainty: dict[str, float] = {}
        self._version = ""

    def __call__(self, request: dict, datastore: Datastore) -> dict:
        model = scoring_model(self.path, self.key, logger)
        if model is None:
            return no_model_answer()
        labelled = sorted(datastore.get_labeled_images())
        unlabelled = sorted(datastore.get_unlabeled_images())
        version = model_version(model)
        digest = hashlib.sha1("\n".join(labelled).encode()).hexdigest()[:12]
        state = f"{version}|{len(labelled)}:{digest}"
        pending = [i for i in unlabelled if datastore.get_image_info(i).get(f"{self.key}_model") != state]
        if not pending:
            return {"scored": 0, "reason": "every unlabelled image is scored for the current model and labels"}
        start = time.time()
        if version != self._version:
            self._features, self._uncertainty, self._version = {}, {}, version
        predictor = None
        missing = [i for i in labelled + unlabelled if i not in self._features]
        if missing:
            predictor = Predictor.from_file(model, device=request.get("device", "auto"))
            features = encoder_features(predictor, [datastore.get_image_uri(i) for i in missing])
            self._features.update(zip(missing, features, strict=True))
        centers = np.stack([self._features[i] for i in labelled]) if labelled else np.zeros((0, 0), np.float32)
        distances = coverage_distance(np.stack([self._features[i] for i in unlabelled]), centers)
        if self.strategy.score is not None:
            unscored = {i: datastore.get_image_uri(i) for i in unlabelled if i not in self._uncertainty}
            if unscored:
                predictor = predictor or Predictor.from_file(model, device=request.get("device", "auto"))
                by_path = {path: image_id for image_id, path in unscored.items()}
                scores = score_images(predictor, unscored.values(), self.strategy.name, self.num_samples)
                self._uncertainty.update({by_path[p]: s for p, s in scores.items()})
            # an image score_images could not read ranks as the most certain (it was logged there)
            distances = distances * uncertainty_weights([self._uncertainty.get(i, 0.0) for i in unlabelled])
        scores = {image_id: float(d) for image_id, d in zip(unlabelled, distances, strict=True)}
        for image_id, score in scores.items():
            datastore.update_image_info(image_id, {self.key: score, f"{self.key}_model": state})
        logger.info("%s: scored %d images in %.1f s with %s", self.key, len(scores), time.time() - start, model)
        return {"scored": len(scores), "model": version, "scores": scores}
