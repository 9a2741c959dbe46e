"""sscase MONAI Label app: model configs (each a ``TaskConfig``; ``main.py`` discovers them)."""

from .sscase import SSCASE

__all__ = ["SSCASE"]
