"""Train from Slicer's point of view: save a label, start training, watch progress, get the new model on Run."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from server import ServerProcess, copy_studies, slicer_client

from sscase_monai import io

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO_ROOT / "sample-data"
SHORT_SCHEDULE = {"epochs": "1,1,1", "samples_per_image": 2, "batch_size": 4}


def checksums(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_save_label_train_and_the_next_run_uses_the_new_model(tmp_path):
    studies = copy_studies(SAMPLE_DATA, tmp_path / "studies")
    with ServerProcess(studies, tmp_path / "server") as server:
        client = slicer_client(server)
        before_mask, _ = client.infer("sscase", "case_000", {"result_extension": ".nrrd"})
        before = io.read_image(before_mask)[0]

        # Slicer saves the corrected label of a PNG image as a W x H x 1 .nii.gz
        png_label = sitk.ReadImage(str(SAMPLE_DATA / "labels" / "final" / "case_015.png"))
        label_file = tmp_path / "case_006_label.nii.gz"
        sitk.WriteImage(sitk.JoinSeries(png_label), str(label_file))
        client.save_label("case_006", str(label_file))
        finals = checksums(studies / "labels" / "final")
        labelled = len(finals)

        start = time.monotonic()
        client.train_start("sscase", dict(SHORT_SCHEDULE))
        seen_progress = []
        while True:
            status = client.train_status(check_if_running=False)
            stats = client.info()["train_stats"]["sscase"]
            if stats.get("epoch"):
                seen_progress.append((stats["epoch"], stats["total_epochs"]))
            if status and status.get("status") in ("DONE", "ERROR", "STOPPED"):
                break
            assert time.monotonic() - start < 600, "training on the sample data took over 10 minutes"
            time.sleep(2)
        elapsed = time.monotonic() - start
        assert status["status"] == "DONE", "\n".join(status.get("details", [])) + server.log_tail()
        print(f"training on the sample data ({labelled} labels, schedule {SHORT_SCHEDULE}) took {elapsed:.0f} s")

        stats = client.info()["train_stats"]["sscase"]
        assert stats["total_epochs"] == 3 and stats["epoch"] == 3 and "total_time" in stats
        assert 0.0 <= stats["best_metric"] <= 1.0
        assert seen_progress and all(total == 3 for _, total in seen_progress)

        published = server.model_dir / "sscase.pt"
        assert published.is_file() and published.with_suffix(".json").is_file()
        after_mask, _ = client.infer("sscase", "case_000", {"result_extension": ".nrrd"})
        after = io.read_image(after_mask)[0]
        assert not np.array_equal(before, after)  # the new model answered, without a restart

        objects = client.datastore()["objects"]
        pseudo = [k for k, v in objects.items() if "pseudo" in v["labels"]]
        assert all("final" not in objects[k]["labels"] for k in pseudo)
        assert checksums(studies / "labels" / "final") == finals  # no final label touched
        assert requests.get(f"{server.url}/datastore/?output=stats", timeout=30).json()["completed"] == labelled
