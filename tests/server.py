"""A real MONAI Label server on 127.0.0.1 for integration tests (``sscase_monai.server_process``); Slicer's client."""

from __future__ import annotations

from sscase_monai.server_process import ServerProcess, copy_studies, free_port

__all__ = ["ServerProcess", "copy_studies", "free_port", "slicer_client"]


def slicer_client(server: ServerProcess):
    """The ``monailabel`` client Slicer's module embeds, saving results in its own folder as Slicer's module does.

    (A client with the default temp folder works as well: ``test_robustness`` checks it with 50 results in a row.)
    """
    from monailabel.client import MONAILabelClient

    folder = server.workdir / "client"
    folder.mkdir(parents=True, exist_ok=True)
    return MONAILabelClient(server.url, tmpdir=str(folder))
