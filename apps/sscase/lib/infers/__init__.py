"""sscase MONAI Label app: infer tasks."""

from .sscase import SSCASEInfer

__all__ = ["SSCASEInfer"]
