"""What the app adds to the running MONAI Label server: request checks its endpoints lack, where an infer request's
image came from, queued scoring, and stopping the training and scoring processes it started when the server stops.

Both are installed when the server switches the app to server mode (in its start-up, before the first request).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Collection
from types import FrameType

import psutil
from fastapi import BackgroundTasks, Depends, FastAPI, File, Form, HTTPException, UploadFile
from fastapi.routing import APIRoute
from monailabel.config import settings
from monailabel.endpoints import infer as infer_endpoint
from monailabel.endpoints import train as train_endpoint
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance
from monailabel.utils.async_tasks import utils as async_tasks
from monailabel.utils.async_tasks.task import AsyncTask

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0
"""Seconds a background process gets to end after SIGTERM before it is killed."""


UPLOADED_FILE_KEY = "sscase_uploaded_file"
"""Request key the app's infer route sets when the image came as a file in the request (never taken from a client)."""

SESSION_KEY = "session"
"""Request key MONAI Label's infer endpoint sets to the session's JSON when the image came from ``session_id``."""

RESERVED_PARAMS: tuple[str, ...] = (UPLOADED_FILE_KEY, SESSION_KEY)
"""Keys a client's ``params`` may not set: they say where the image file came from."""


def infer_params(params: str, uploaded: bool) -> str:
    """A client's infer ``params`` (JSON) without the reserved keys, plus :data:`UPLOADED_FILE_KEY` for an upload.

    Raises:
        HTTPException: 400 for ``params`` that are not a JSON object (MONAI Label answers them with a 500).
    """
    try:
        values = json.loads(params) if params else {}
    except json.JSONDecodeError as e:
        raise HTTPException(400, f"params must be a JSON object, got {params[:80]!r}: {e}") from e
    if not isinstance(values, dict):
        raise HTTPException(400, f"params must be a JSON object, got {type(values).__name__}")
    values = {k: v for k, v in values.items() if k not in RESERVED_PARAMS}
    if uploaded:
        values[UPLOADED_FILE_KEY] = True
    return json.dumps(values)


async def run_inference(
    background_tasks: BackgroundTasks,
    model: str,
    image: str = "",
    session_id: str = "",
    params: str = Form("{}"),
    file: UploadFile | None = File(None),
    label: UploadFile | None = File(None),
    output: infer_endpoint.ResultType | None = None,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
):
    """``POST /infer/{model}``: MONAI Label's own ``run_inference``, told where the image comes from.

    A file in the request is marked :data:`UPLOADED_FILE_KEY` (the app then reads that file, and nothing else outside
    the datastore); a ``session_id`` must name a live session (MONAI Label then sets :data:`SESSION_KEY`); otherwise
    ``image`` is a datastore id. Nothing to segment is a 400, an unknown session a 404 (MONAI Label: 500, or a
    misleading "not in the datastore").
    """
    if not image and not session_id and not file:
        raise HTTPException(
            400, "nothing to segment: send a datastore image id (?image=ID) or an image file (form field 'file')"
        )
    if session_id and not file:
        sessions = app_instance().sessions()
        if sessions is None or not sessions.get_session(session_id, update_ts=False):
            raise HTTPException(
                404, f"unknown or expired session id {session_id!r}: send the image again (a new session or a file)"
            )
    params = infer_params(params, uploaded=bool(file))
    return infer_endpoint.run_inference(background_tasks, model, image, session_id, params, file, label, output)


def run_scoring(method: str, params: dict | None = None, run_sync: bool | None = False) -> dict:
    """``POST /scoring/{method}``: run it now, or after the scoring task that runs (MONAI Label refuses with a 429).

    After a training, MONAI Label asks for every scoring method at once, one request each; it refused all but the
    first, so Next Sample went on choosing with the old model's scores. A method already waiting in the queue is not
    queued twice: it will score with the newest model when it starts.
    """
    app_instance().require_scoring_method(method)
    for task in async_tasks.tasks("scoring"):
        if task["status"] == "SUBMITTED" and task["request"].get("method") == method:
            return task
    result, detail = AsyncTask.run(
        "scoring", request={"method": method}, params=params, force_sync=bool(run_sync), enqueue=True
    )
    if result is None:
        raise HTTPException(status_code=429, detail=detail)
    return result


async def api_run_scoring(
    method: str,
    params: dict | None = None,
    run_sync: bool | None = False,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
) -> dict:
    return run_scoring(method, params, run_sync)


async def api_train_model(
    model: str,
    params: dict | None = None,
    run_sync: bool | None = False,
    enqueue: bool | None = False,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
) -> dict:
    """``POST /train/{model}``: checked before MONAI Label starts its background process, then started.

    An unknown model (404), an invalid option (400) or too few labels (409) are answered here, where Slicer shows
    the message in a dialog; MONAI Label accepted such a request and failed in the background, which Slicer shows
    only as "Training: ERROR" in a tooltip. A training that starts publishes epoch 0 of its planned epochs at once.
    """
    app = app_instance()
    plan = app.plan_training(model, params or {})
    already_running = bool(async_tasks.processes("train"))
    result = train_endpoint.run_model(model, params, run_sync, enqueue)  # 429 while another training runs
    if not already_running and not run_sync:
        app.publish_training_start(model, plan)
    return result


def add_request_checks(app) -> None:
    """Install the app's own ``POST /infer/{model}``, ``/scoring/{method}`` and ``/train/{model}`` ahead of MONAI
    Label's.

    Each keeps MONAI Label's parameters and authentication: :func:`run_inference` tells the app where the image came
    from, :func:`run_scoring` queues a scoring method instead of refusing it while another runs and answers an
    unknown method with a 404 (MONAI Label: 200 and a background task that fails), :func:`api_train_model` refuses
    a training it cannot run at request time.

    Args:
        app: the running :class:`~main.SSCASEApp`.
    """
    server = sys.modules.get("monailabel.app")
    api: FastAPI | None = getattr(server, "app", None)
    if api is None:
        logger.warning("request checks not installed: this server does not run monailabel.app:app")
        return
    prefix = settings.MONAI_LABEL_API_STR
    routes = [
        (f"{prefix}/infer/{{model}}", run_inference),
        (f"{prefix}/scoring/{{method}}", api_run_scoring),
        (f"{prefix}/train/{{model}}", api_train_model),
    ]
    for index, (path, endpoint) in enumerate(routes):
        route = APIRoute(path, endpoint, methods=["POST"], include_in_schema=False)
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


TASK_MODULE = "monailabel.interfaces.utils.app"
"""The module MONAI Label runs each background task (train, scoring, batch infer) in, as a child process."""


def _unregistered_task_processes(known: Collection[psutil.Process]) -> list[psutil.Process]:
    """This server's background-task processes not in ``known``, with their children, found by command line.

    MONAI Label registers a task's process in ``background_processes`` only after starting it: a signal in between
    would miss it there.
    """
    found: list[psutil.Process] = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            command = child.cmdline()
            if TASK_MODULE in command and child not in known and child not in found:
                method = command[command.index(TASK_MODULE) + 2 : command.index(TASK_MODULE) + 3]
                logger.info("stopping %s task (process %d)", " ".join(method) or "a", child.pid)
                found += [child, *child.children(recursive=True)]
    return found


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
    processes += _unregistered_task_processes(processes)
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    return [p.pid for p in processes]
