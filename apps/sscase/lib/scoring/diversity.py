"""Scoring: how far each unlabelled image is from every labelled one in the model's encoder feature space."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence

import numpy as np
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from sscase_monai.active_learning import ActiveLearningStrategy, coverage_distance, encoder_features, model_version
from sscase_monai.inference import Predictor

from .model import no_model_answer, scoring_model

logger = logging.getLogger(__name__)


class DiversityScoring(ScoringMethod):
    """Write the cosine distance to the nearest labelled image (encoder features) into each unlabelled image's info.

    The ``diversity`` strategy then serves the farthest image: k-center greedy (core-set) one label at a time, as
    :func:`sscase_monai.active_learning.k_center_greedy` does for a batch. Scores are redone when the model file or
    the set of labelled images changes; features are kept in memory per model file.

    Args:
        path: candidate model files, lowest priority first (the last existing one is used).
        strategy: the registry entry (``sscase_monai.active_learning.STRATEGY_REGISTRY``, a ``"coverage"`` one)
            whose key the distance is written under.
    """

    def __init__(self, path: Sequence[str | None], strategy: ActiveLearningStrategy) -> None:
        super().__init__("Distance of unlabelled images to the labelled ones (encoder features, current model)")
        self.path = [p for p in path if p]
        self.key = strategy.key
        self._features: dict[str, np.ndarray] = {}
        self._features_version = ""

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
        if version != self._features_version:
            self._features, self._features_version = {}, version
        missing = [i for i in labelled + unlabelled if i not in self._features]
        if missing:
            predictor = Predictor.from_file(model, device=request.get("device", "auto"))
            features = encoder_features(predictor, [datastore.get_image_uri(i) for i in missing])
            self._features.update(zip(missing, features, strict=True))
        centers = np.stack([self._features[i] for i in labelled]) if labelled else np.zeros((0, 0), np.float32)
        distances = coverage_distance(np.stack([self._features[i] for i in unlabelled]), centers)
        scores = {image_id: float(d) for image_id, d in zip(unlabelled, distances, strict=True)}
        for image_id, score in scores.items():
            datastore.update_image_info(image_id, {self.key: score, f"{self.key}_model": state})
        logger.info("%s: scored %d images in %.1f s with %s", self.key, len(scores), time.time() - start, model)
        return {"scored": len(scores), "model": version, "scores": scores}
