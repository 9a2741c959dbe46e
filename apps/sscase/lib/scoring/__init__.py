"""sscase MONAI Label app: scoring methods (uncertainty of unlabelled images, for active learning)."""

from .uncertainty import UncertaintyScoring

__all__ = ["UncertaintyScoring"]
