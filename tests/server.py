"""A real MONAI Label server on 127.0.0.1 for integration tests (``sscase_monai.server_process``); Slicer's client."""

from __future__ import annotations

from pathlib import Path

from sscase_monai.server_process import ServerProcess, copy_studies, free_port

__all__ = ["QUIET", "ServerProcess", "copy_studies", "free_port", "sample_data_server", "slicer_client"]

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample-data"
QUIET = {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}
"""Server environment without background scoring (scoring only when a test asks for it)."""


def sample_data_server(root: Path) -> ServerProcess:
    """A server (not started yet: use it as a context manager) on a private copy of the bundled sample data,
    without background scoring."""
    return ServerProcess(copy_studies(SAMPLE_DATA, root / "studies"), root / "server", env=QUIET)


def slicer_client(server: ServerProcess):
    """The ``monailabel`` client Slicer's module embeds, saving results in its own folder as Slicer's module does.

    (A client with the default temp folder works as well: ``test_robustness`` checks it with 50 results in a row.)
    """
    from monailabel.client import MONAILabelClient

    folder = server.workdir / "client"
    folder.mkdir(parents=True, exist_ok=True)
    return MONAILabelClient(server.url, tmpdir=str(folder))
