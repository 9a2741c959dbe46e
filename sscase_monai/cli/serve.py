"""``sscase-monai serve``: start the MONAI Label server with the sscase app, bound to 127.0.0.1 by default.

A thin wrapper over ``monailabel start_server --app apps/sscase``. It finds the app wherever the command runs from,
serves a working copy of the bundled sample data when no studies folder is given (so a running server never writes
into the source tree), switches MLflow tracking off unless asked, and lists the image types the app reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from sscase_monai.paths import bundled_app_dir, bundled_sample_data, default_workspace

logger = logging.getLogger(__name__)

DATASTORE_FILE_EXTENSIONS: tuple[str, ...] = ("*.nii.gz", "*.nii", "*.nrrd", "*.png", "*.jpg", "*.jpeg", "*.dcm")
"""Image files the datastore lists: what Slicer sends (NIfTI/NRRD) and what scanners export (PNG/JPEG/DICOM)."""


LOOPBACK_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
"""Addresses that only this machine can reach; any other ``--host`` is logged as a warning."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``serve``."""
    parser = subparsers.add_parser(
        "serve",
        help="start the MONAI Label server (3D Slicer connects to it)",
        description=(
            "Start the MONAI Label server with the sscase app. Without --studies it serves a working copy of the "
            "bundled sample data (copied once to the workspace folder), so the source tree stays untouched. "
            "Connect from 3D Slicer's MONAI Label module with the URL it prints."
        ),
    )
    parser.add_argument(
        "--studies",
        type=Path,
        default=None,
        help="studies folder (images at its top level, labels in labels/final); default: the workspace copy of "
        "the bundled sample data",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--conf",
        nargs=2,
        action="append",
        metavar=("KEY", "VALUE"),
        default=[],
        help="app option, repeatable (see apps/sscase/README.md), e.g. --conf tta true",
    )
    parser.add_argument("--app", type=Path, default=None, help="app folder (default: the bundled apps/sscase)")
    parser.add_argument(
        "--workspace",
        type=Path,
        default=None,
        help="where the sample-data working copy lives (default $SSCASE_MONAI_HOME or ~/.local/share/sscase-monai)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--dry-run", action="store_true", help="print the monailabel command and exit")
    parser.set_defaults(func=run)


def prepare_studies(studies: Path | None, workspace: Path | None) -> Path:
    """The studies folder to serve: ``studies`` itself, or a working copy of the bundled sample data."""
    if studies is not None:
        studies = studies.expanduser().resolve()
        if not studies.is_dir():
            raise FileNotFoundError(f"studies folder {studies} does not exist")
        return studies
    source = bundled_sample_data()
    target = (workspace or default_workspace()).expanduser().resolve() / "sample-data"
    if not target.exists():
        logger.info("copying the bundled sample data %s to the working copy %s", source, target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, target)
    return target


def server_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the server: MLflow tracking off, our file types listed, and OpenMP's passive wait, unless the
    caller set them.

    ``OMP_WAIT_POLICY=PASSIVE``: a training started from Slicer runs beside the server's infers, and with OpenMP's
    default active wait the processes spin against each other. Measured on 2 cores, SS_CASE_UNet batch 1 at 256x256:
    1300 ms (default) vs 59 ms (passive) beside an HC18 training, 99 vs 57 ms beside a sample-data training; on an
    idle CPU 30 vs 54 ms, and CPU training 8.0 vs 7.1 img/s. A steady Run is worth more than the idle-CPU figures.
    """
    env = dict(os.environ if base is None else base)
    env.setdefault("MONAI_LABEL_TRACKING_ENABLED", "false")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("MONAI_LABEL_DATASTORE_FILE_EXT", json.dumps(list(DATASTORE_FILE_EXTENSIONS)))
    return env


def monailabel_command(
    app: Path, studies: Path, host: str, port: int, conf: list[list[str]], log_level: str
) -> list[str]:
    """The ``monailabel start_server`` command line."""
    command = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies)]
    command += ["--host", host, "--port", str(port), "--verbose", log_level]
    for key, value in conf:
        command += ["--conf", key, value]
    return command


def _auth_enabled() -> bool:
    return os.environ.get("MONAI_LABEL_AUTH_ENABLE", "false").strip().lower() in ("1", "true", "yes", "on")


def run(args: argparse.Namespace) -> int:
    """Start the server in place of this process."""
    app = (args.app or bundled_app_dir()).expanduser().resolve()
    if not (app / "main.py").is_file():
        raise FileNotFoundError(f"{app} is not a MONAI Label app folder (no main.py)")
    studies = prepare_studies(args.studies, args.workspace)
    command = monailabel_command(app, studies, args.host, args.port, args.conf, args.log_level)
    loopback = args.host in LOOPBACK_HOSTS
    exposure = "this machine only" if loopback else "reachable from the network"
    logger.info("app: %s", app)
    logger.info("studies: %s", studies)
    logger.info(
        "binding %s:%d (%s); in 3D Slicer's MONAI Label module use http://%s:%d",
        args.host,
        args.port,
        exposure,
        "127.0.0.1" if args.host == "0.0.0.0" else args.host,
        args.port,
    )
    if not loopback:
        logger.warning(
            "the server is exposed to the network on %s:%d: anyone who can reach this machine can read the images "
            "and change labels and models%s. Use this only on a trusted network; prefer 127.0.0.1 with an SSH tunnel "
            "or a TLS reverse proxy (README.md, 'Exposing the server')",
            args.host,
            args.port,
            "" if _auth_enabled() else " (MONAI Label's auth is off: MONAI_LABEL_AUTH_ENABLE is not true)",
        )
    if args.dry_run:
        print(" ".join(command))
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, server_environment())
