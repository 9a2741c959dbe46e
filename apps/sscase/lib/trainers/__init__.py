"""sscase MONAI Label app: train tasks."""

from .sscase import SSCASETrain, parse_ints

__all__ = ["SSCASETrain", "parse_ints"]
