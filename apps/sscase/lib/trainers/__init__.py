"""sscase MONAI Label app: train tasks."""

from .sscase import SSCASETrain

__all__ = ["SSCASETrain"]
