"""What the app adds to the running MONAI Label server: request checks its endpoints lack, and stopping the training
and scoring processes it started when the server stops.

Both are installed when the server switches the app to server mode (in its start-up, before the first request).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

import psutil
from fastapi import Depends, FastAPI, File, HTTPException, UploadFile
from fastapi.routing import APIRoute
from monailabel.config import settings
from monailabel.endpoints import infer as infer_endpoint
from monailabel.endpoints import scoring as scoring_endpoint
from monailabel.utils.async_tasks import utils as async_tasks

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0
"""Seconds a background process gets to end after SIGTERM before it is killed."""


def require_image_or_file(image: str = "", session_id: str = "", file: UploadFile | None = File(None)) -> None:
    """400 for an infer request with nothing to segment (MONAI Label answers it with a 500)."""
    if not image and not session_id and not file:
        raise HTTPException(
            400, "nothing to segment: send a datastore image id (?image=ID) or an image file (form field 'file')"
        )


def add_request_checks(app) -> None:
    """Check requests MONAI Label's endpoints would answer with a 500 or accept and then fail in the background.

    ``POST /infer/{model}`` with neither an image id nor a file gets a 400, ``POST /scoring/{method}`` with an
    unknown method a 404 (MONAI Label starts a background task that fails). Each is served by MONAI Label's own
    endpoint function (same parameters and authentication), in a route placed ahead of MONAI Label's with the check
    as one more dependency.

    Args:
        app: the running :class:`~main.SSCASEApp` (knows the scoring methods).
    """
    server = sys.modules.get("monailabel.app")
    api: FastAPI | None = getattr(server, "app", None)
    if api is None:
        logger.warning("request checks not installed: this server does not run monailabel.app:app")
        return

    def require_scoring_method(method: str) -> None:
        app.require_scoring_method(method)

    prefix = settings.MONAI_LABEL_API_STR
    checked = [
        (f"{prefix}/infer/{{model}}", infer_endpoint.api_run_inference, require_image_or_file),
        (f"{prefix}/scoring/{{method}}", scoring_endpoint.api_run_method, require_scoring_method),
    ]
    for index, (path, endpoint, check) in enumerate(checked):
        route = APIRoute(path, endpoint, methods=["POST"], dependencies=[Depends(check)], include_in_schema=False)
        api.router.routes.insert(index, route)  # matched before MONAI Label's (which stays in the API docs)


def stop_background_tasks_on_exit() -> None:
    """Stop MONAI Label's background processes when the server gets SIGTERM or SIGINT.

    MONAI Label runs training, scoring and batch infer as child processes and never stops them: on SIGTERM the server
    exited and left a training running, on SIGINT (Ctrl+C) it waited for the training to end. This handler stops
    them, then passes the signal on to the server's own handler (uvicorn's graceful shutdown). Call it from the main
    thread while the server runs, after uvicorn installed its handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        logger.warning("background tasks are not stopped on exit: signal handlers need the main thread")
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _chained_handler(signal.getsignal(sig)))


def _chained_handler(previous: Callable | int | None) -> Callable[[int, FrameType | None], None]:
    def handle(signum: int, frame: FrameType | None) -> None:
        logger.info("%s: stopping the background tasks", signal.Signals(signum).name)
        try:
            stop_background_tasks()
        finally:
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

    return handle


def stop_background_tasks(timeout: float = STOP_TIMEOUT) -> list[int]:
    """Stop every running training, scoring and batch-infer process (with its children) and cancel queued tasks.

    Each process gets SIGTERM, then SIGKILL after ``timeout`` seconds; a stopped training loses at most its current
    epoch (it resumes from its checkpoint, and a half-written model is never published).

    Returns:
        The ids of the processes stopped.
    """
    for executor in list(async_tasks.background_executors.values()):
        executor.shutdown(wait=False, cancel_futures=True)  # nothing queued starts after this
    processes: list[psutil.Process] = []
    for method, running in list(async_tasks.background_processes.items()):
        for task_id, process in list(running.items()):
            try:
                parent = psutil.Process(process.pid)
                processes += [parent, *parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            logger.info("stopping %s task %s (process %d)", method, task_id, process.pid)
            for task in async_tasks.background_tasks.get(method, []):
                if task["id"] == task_id:
                    task["status"] = "STOPPED"
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    return [p.pid for p in processes]
