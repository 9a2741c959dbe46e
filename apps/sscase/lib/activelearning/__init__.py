"""sscase MONAI Label app: active-learning strategies."""

from .highest_score import HighestScore

__all__ = ["HighestScore"]
