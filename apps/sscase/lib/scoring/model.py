"""What the scoring methods share: finding the model to score with, and the answer when there is none yet."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sscase_monai.model_files import last_existing_path

logger = logging.getLogger(__name__)


def scoring_model(path: Sequence[str], key: str, log: logging.Logger = logger) -> str | None:
    """The model file to score with: the last existing one of ``path``; ``None`` (logged) when none is trained yet.

    Args:
        path: candidate model files, lowest priority first.
        key: the scoring's key, for the log.
        log: the logger to tell on (the scoring method's own).

    Returns:
        The model file, or ``None``.
    """
    model = last_existing_path(path)
    if model is None:
        log.info("%s scoring skipped: no trained model yet", key)
    return model


def no_model_answer() -> dict[str, Any]:
    """A scoring task's answer when :func:`scoring_model` found no model."""
    return {"scored": 0, "reason": "no trained model yet"}
