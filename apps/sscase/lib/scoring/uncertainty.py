"""Scoring: uncertainty of every unlabelled image under the current model, stored in the datastore's image info."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from sscase_monai.active_learning import ActiveLearningStrategy, model_version, score_images
from sscase_monai.inference import Predictor

from .model import no_model_answer, scoring_model

logger = logging.getLogger(__name__)


class UncertaintyScoring(ScoringMethod):
    """Score unlabelled images with an ``"uncertainty"`` strategy's score and write it under its key.

    Runs in MONAI Label's background scoring task: on start, after training, and after each next-sample. Images
    already scored by the same model file are skipped.

    Args:
        path: candidate model files, lowest priority first (the last existing one is used).
        strategy: the registry entry (``sscase_monai.active_learning.STRATEGY_REGISTRY``) whose score to compute.
        num_samples: MC-dropout passes per image.
    """

    def __init__(self, path: Sequence[str | None], strategy: ActiveLearningStrategy, num_samples: int = 8) -> None:
        super().__init__(f"Uncertainty of unlabelled images ({strategy.name}) under the current model")
        self.path = [p for p in path if p]
        self.strategy = strategy.name
        self.key = strategy.key
        self.num_samples = num_samples

    def __call__(self, request: dict, datastore: Datastore) -> dict:
        model = scoring_model(self.path, self.key, logger)
        if model is None:
            return no_model_answer()
        version = model_version(model)
        pending = {
            image_id: datastore.get_image_uri(image_id)
            for image_id in datastore.get_unlabeled_images()
            if datastore.get_image_info(image_id).get(f"{self.key}_model") != version
        }
        if not pending:
            return {"scored": 0, "reason": "every unlabelled image is scored by the current model"}
        start = time.time()
        predictor = Predictor.from_file(model, device=request.get("device", "auto"))
        scores = score_images(predictor, pending.values(), strategy=self.strategy, num_samples=self.num_samples)
        by_path = {path: image_id for image_id, path in pending.items()}
        for path, score in scores.items():
            datastore.update_image_info(by_path[path], {self.key: score, f"{self.key}_model": version})
        logger.info("%s: scored %d images in %.1f s with %s", self.key, len(scores), time.time() - start, model)
        return {"scored": len(scores), "model": version, "scores": {by_path[p]: s for p, s in scores.items()}}
