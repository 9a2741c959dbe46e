"""Where the bundled app, sample data and the user's workspace are."""

from __future__ import annotations

import os
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1]
"""The checkout this package was installed from (``pip install -e .``)."""


def bundled_app_dir() -> Path:
    """``apps/sscase`` of the source checkout."""
    return _in_checkout(SOURCE_ROOT / "apps" / "sscase")


def bundled_sample_data() -> Path:
    """``sample-data`` of the source checkout."""
    return _in_checkout(SOURCE_ROOT / "sample-data")


def default_workspace() -> Path:
    """The user's working folder for server data: ``$SSCASE_MONAI_HOME`` or ``~/.local/share/sscase-monai``."""
    home = os.environ.get("SSCASE_MONAI_HOME")
    return Path(home).expanduser() if home else Path.home() / ".local" / "share" / "sscase-monai"


def _in_checkout(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the app and sample data come with the source checkout; install it with "
            "`pip install -e .` from a clone of the repository"
        )
    return path
