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


def existing_file(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a :class:`~pathlib.Path`, checked to be a file.

    Args:
        path: the file.
        what: what the file is, for the message (e.g. ``"model file"``: "model file x.pt not found").

    Returns:
        ``Path(path)``.

    Raises:
        FileNotFoundError: no file at ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    return path


def _in_checkout(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the app and sample data come with the source checkout; install it with "
            "`pip install -e .` from a clone of the repository"
        )
    return path
