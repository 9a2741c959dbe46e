"""The foundation: the ``sscase-monai`` command and a real MONAI Label server on the bundled sample data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests
from monailabel.client import MONAILabelClient
from server import ServerProcess, copy_studies

from sscase_monai.io import is_image_file

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO_ROOT / "sample-data"


def sample_counts(studies: Path) -> tuple[int, int]:
    """Images at the top of a studies folder, and how many have a final label."""
    images = [p for p in studies.iterdir() if p.is_file() and is_image_file(p)]
    final = studies / "labels" / "final"
    labelled = [p for p in final.iterdir() if is_image_file(p)] if final.is_dir() else []
    return len(images), len(labelled)


@pytest.mark.parametrize("command", [[], ["serve"], ["sample-data"], ["train"], ["evaluate"], ["predict"]])
def test_help_of_every_subcommand(command):
    result = subprocess.run(
        [sys.executable, "-m", "sscase_monai", *command, "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "usage: sscase-monai" in result.stdout


def test_serve_dry_run_binds_loopback_by_default(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sscase_monai", "serve", "--dry-run", "--workspace", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "--host 127.0.0.1" in result.stdout and "--port 8000" in result.stdout
    assert "this machine only" in result.stderr
    # without --studies the server gets a working copy of the sample data, never the source tree
    assert f"--studies {tmp_path.resolve() / 'sample-data'}" in result.stdout
    assert sample_counts(tmp_path / "sample-data") == sample_counts(SAMPLE_DATA)


def test_server_environment_defaults_keep_what_the_user_set():
    from sscase_monai.cli.serve import server_environment

    env = server_environment({"PATH": "/usr/bin"})
    assert env["MONAI_LABEL_TRACKING_ENABLED"] == "false"  # no MLflow unless configured
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"  # infers beside a training do not spin against it
    assert env["PATH"] == "/usr/bin"
    user = server_environment({"OMP_WAIT_POLICY": "ACTIVE", "MONAI_LABEL_TRACKING_ENABLED": "true"})
    assert user["OMP_WAIT_POLICY"] == "ACTIVE" and user["MONAI_LABEL_TRACKING_ENABLED"] == "true"


def test_bundled_sample_data_is_a_studies_folder():
    total, labelled = sample_counts(SAMPLE_DATA)
    assert 12 <= total <= 24, total
    assert 0 < labelled < total
    assert sum(f.stat().st_size for f in SAMPLE_DATA.rglob("*") if f.is_file()) < 5_000_000


@pytest.mark.integration
def test_server_lists_the_sample_data(tmp_path):
    studies = copy_studies(SAMPLE_DATA, tmp_path / "studies")
    total, labelled = sample_counts(studies)
    with ServerProcess(studies, tmp_path / "server") as server:
        client = MONAILabelClient(server.url)
        info = client.info()
        assert info["name"].startswith("sscase-monai")
        assert "config" not in info
        assert info["datastore"]["total"] == total
        stats = requests.get(f"{server.url}/datastore/?output=stats", timeout=30).json()
        assert stats["total"] == total
        assert stats["completed"] == labelled
        assert stats["label_tags"].get("final") == labelled
        objects = client.datastore()["objects"]  # the full listing Slicer's module reads
        assert sum("final" in entry["labels"] for entry in objects.values()) == labelled


@pytest.mark.integration
def test_serving_the_default_sample_data_leaves_the_tree_clean(tmp_path):
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")

    def status() -> str:
        return subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout

    before = status()
    server = ServerProcess(SAMPLE_DATA, tmp_path / "server")
    server.conf = []  # the app's own model folder, as a user gets it
    server.command = lambda: [  # no --studies: the default a user gets
        sys.executable,
        "-m",
        "sscase_monai",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(server.port),
    ]
    with server:
        assert len(MONAILabelClient(server.url).datastore()["objects"]) == sample_counts(SAMPLE_DATA)[0]
    assert status() == before
    assert (tmp_path / "server" / "home" / "sample-data" / "datastore_v2.json").is_file()
