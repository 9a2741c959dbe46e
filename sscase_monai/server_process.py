"""``sscase-monai serve`` in a child process on 127.0.0.1: for scripts, benchmarks and integration tests.

Example::

    with ServerProcess(studies="sample-data", workdir="runs/server") as server:
        client = MONAILabelClient(server.url)
        ...
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import requests


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``sscase-monai serve`` in a subprocess; its log goes to ``log_path``.

    Args:
        studies: studies folder to serve.
        workdir: folder for the model directory, the log and the workspace.
        conf: extra ``--conf`` pairs.
        env: extra environment variables.
    """

    def __init__(
        self,
        studies: Path,
        workdir: Path,
        conf: Sequence[tuple[str, str]] = (),
        env: dict[str, str] | None = None,
    ):
        self.studies = Path(studies)
        self.workdir = Path(workdir)
        self.model_dir = self.workdir / "model"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "server.log"
        self.conf = [("model_dir", str(self.model_dir)), *conf]
        self.env = {**os.environ, "SSCASE_MONAI_HOME": str(self.workdir / "home"), **(env or {})}
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "sscase_monai", "serve", "--studies", str(self.studies)]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        for key, value in self.conf:
            command += ["--conf", key, value]
        return command

    def start(self, timeout: float = 180.0, poll_interval: float = 0.5) -> ServerProcess:
        """Start the server and wait until ``/info/`` answers (polled every ``poll_interval`` s).

        ``startup_seconds`` then holds the time from the process start to the first answer.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - kept open for the server's lifetime
        self.process = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.workdir,
            start_new_session=True,
        )
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/info/", timeout=5).ok:
                    self.startup_seconds = time.monotonic() - started
                    return self
            except requests.RequestException:
                pass
            time.sleep(poll_interval)
        self.stop()
        raise TimeoutError(f"server did not answer within {timeout} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the server and every process it started (training runs in a child process)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()
        self.process = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def copy_studies(source: Path, target: Path) -> Path:
    """A private copy of a studies folder without what a server wrote into it."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("datastore_v2.json", ".lock", "original"))
    return target
