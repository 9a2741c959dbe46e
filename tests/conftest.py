"""Shared fixtures: where the real ultrasound data is, and the repository's own folders."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO_ROOT / "sample-data"
APP_DIR = REPO_ROOT / "apps" / "sscase"
SHARED_DATA = Path(os.environ.get("SSCASE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (HC18 and PSFHS real ultrasound); skips the test when it is not beside the checkout."""
    if not (SHARED_DATA / "hc18").is_dir():
        pytest.skip(f"real ultrasound data not found at {SHARED_DATA} (set SSCASE_SHARED_DATA or place ../shared)")
    return SHARED_DATA


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test, restored afterwards: tiny models gain nothing from more, and several threads
    on a CPU busy with other jobs were measured 10x slower (OpenMP threads waiting for each other)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def seeded_one_thread(one_thread: None) -> None:
    """:func:`one_thread` with torch's global random state seeded with 0."""
    import torch

    torch.manual_seed(0)
