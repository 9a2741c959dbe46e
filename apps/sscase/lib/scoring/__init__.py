"""sscase MONAI Label app: scoring methods (uncertainty and diversity of unlabelled images, for active learning)."""

from .diversity import DiversityScoring
from .uncertainty import UncertaintyScoring

__all__ = ["DiversityScoring", "UncertaintyScoring"]
