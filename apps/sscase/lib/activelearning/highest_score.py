"""Strategy: the unlabelled image with the highest uncertainty score (written by a scoring method)."""

from __future__ import annotations

import logging
import time

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from sscase_monai.active_learning import candidates_from_info, select_next

logger = logging.getLogger(__name__)


class HighestScore(Strategy):
    """Next sample = the unlabelled image with the highest ``key`` score, skipping ones served in the last minutes.

    Args:
        key: the image-info key the matching scoring method writes (e.g. ``epistemic_entropy``).
        description: what Slicer shows.
        cooldown_seconds: an image served this recently goes after the others (someone may be labelling it).
    """

    def __init__(self, key: str, description: str, cooldown_seconds: float = 600.0) -> None:
        super().__init__(description)
        self.key = key
        self.cooldown_seconds = cooldown_seconds

    def __call__(self, request: dict, datastore: Datastore) -> dict:
        images = datastore.get_unlabeled_images()
        if not images:
            return {}  # the app answers 404 with the reason
        infos = {image_id: datastore.get_image_info(image_id) for image_id in images}
        chosen = select_next(
            candidates_from_info(infos, self.key, request["strategy"]), time.time(), self.cooldown_seconds
        )
        logger.info("%s: next sample %s (score %s)", request["strategy"], chosen.image_id, chosen.score)
        return {"id": chosen.image_id, self.key: chosen.score}
