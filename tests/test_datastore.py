"""The app's datastore on its own (no server): its folder watcher."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest
from server import copy_studies

from sscase_monai.cli.serve import DATASTORE_FILE_EXTENSIONS

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO_ROOT / "sample-data"
sys.path.insert(0, str(REPO_ROOT / "apps" / "sscase"))

from lib.datastore import SSCASEDatastore  # noqa: E402


@pytest.fixture
def datastore(tmp_path):
    studies = copy_studies(SAMPLE_DATA, tmp_path / "studies")
    store = SSCASEDatastore(str(studies), extensions=list(DATASTORE_FILE_EXTENSIONS), auto_reload=True)
    yield store
    store._observer.stop()
    store._observer.join(timeout=10)


def test_watcher_ignores_reads_but_sees_a_new_image(datastore):
    events = []
    datastore._handler.on_any_event = events.append
    studies = Path(datastore._datastore_path)
    image = next(studies.glob("*.png"))
    for _ in range(5):  # what a Run on a datastore id does to the file
        image.read_bytes()
    time.sleep(1.0)
    assert events == [], f"reading a studies file woke the watcher: {events}"

    shutil.copyfile(image, studies / "new_scan.png")
    deadline = time.monotonic() + 15
    while "new_scan" not in datastore.list_images() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "new_scan" in datastore.list_images()
    assert any(e.src_path.endswith("new_scan.png") for e in events)
