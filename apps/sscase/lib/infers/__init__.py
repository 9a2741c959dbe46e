"""sscase MONAI Label app: infer tasks."""

from .sscase import SSCASEInfer, SSCASEMeasurementsInfer

__all__ = ["SSCASEInfer", "SSCASEMeasurementsInfer"]
