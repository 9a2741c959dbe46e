"""``sscase-monai train``: clean errors before training, a tiny real run, and two-process DDP on CPU (Gloo)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from sscase_monai import io
from sscase_monai.cli import main
from sscase_monai.inference import Predictor

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO_ROOT / "sample-data"
TINY = ["--input-size", "64", "--samples-per-image", "1", "--batch-size", "4", "--no-progress", "--no-tensorboard"]


def png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def image(h: int = 40, w: int = 48) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (h, w), dtype=np.uint8)


def mask(h: int = 40, w: int = 48, value: int = 1) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[10:20, 10:30] = value
    return m


@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path]:
    """Three good PNG pairs (a, b, c)."""
    for name in ("a", "b", "c"):
        png(tmp_path / "images" / f"{name}.png", image())
        png(tmp_path / "labels" / f"{name}.png", mask(value=255))
    return tmp_path / "images", tmp_path / "labels"


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(["train", *args])
    return code, capsys.readouterr().err


def test_missing_label_is_named(folders, tmp_path, capsys):
    images, labels = folders
    (labels / "b.png").unlink()
    code, err = run_cli(["--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert err.startswith("sscase-monai train: error:") and "b.png" in err and "no label" in err


def test_label_of_another_size_is_named(folders, tmp_path, capsys):
    images, labels = folders
    png(labels / "c.png", mask(30, 30))
    code, err = run_cli(["--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "o"), *TINY], capsys)
    assert code == 2 and "c.png" in err and "(H, W) = (30, 30)" in err
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_label_values_outside_the_classes_are_named(folders, tmp_path, capsys):
    images, labels = folders
    png(labels / "a.png", mask(value=3))
    code, err = run_cli(["--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "o"), *TINY], capsys)
    assert code == 2 and "a.png" in err and "outside the 2 configured classes" in err


def test_unreadable_image_is_named(folders, tmp_path, capsys):
    images, labels = folders
    (images / "b.png").write_bytes(b"not a png")
    code, err = run_cli(["--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "o"), *TINY], capsys)
    assert code == 2 and "b.png" in err


def test_empty_or_missing_folders(folders, tmp_path, capsys):
    images, labels = folders
    (tmp_path / "empty").mkdir()
    code, err = run_cli(["--images", str(tmp_path / "empty"), "--labels", str(labels), "--out", "o"], capsys)
    assert code == 2 and "no image files" in err
    code, err = run_cli(["--images", str(tmp_path / "nowhere"), "--labels", str(labels), "--out", "o"], capsys)
    assert code == 2 and "nowhere: no such folder" in err
    args = ["--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "o")]
    code, err = run_cli([*args, "--val-images", str(images)], capsys)
    assert code == 2 and "--val-labels" in err
    code, err = run_cli([*args, "--unlabeled", str(tmp_path / "empty")], capsys)
    assert code == 2 and "no image files" in err
    code, err = run_cli([*args, "--labels-json", "[1]"], capsys)
    assert code == 2 and "--labels-json" in err
    code, err = run_cli([*args, "--epochs", "1,2,3,4"], capsys)
    assert code == 2 and "epochs needs" in err


def test_single_image_cannot_be_split_for_validation(tmp_path, capsys):
    png(tmp_path / "images" / "a.png", image())
    png(tmp_path / "labels" / "a.png", mask())
    args = ["--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"), "--out", str(tmp_path / "o")]
    code, err = run_cli(args, capsys)
    assert code == 2 and "no validation images" in err


@pytest.fixture(scope="module")
def sample_folders(tmp_path_factory) -> dict[str, Path]:
    """The sample data as images/ labels/ unlabeled/ folders (8 labelled, 3 unlabelled)."""
    root = tmp_path_factory.mktemp("sample")
    for name in ("images", "labels", "unlabeled"):
        (root / name).mkdir()
    labels = sorted((SAMPLE_DATA / "labels" / "final").iterdir())
    labelled = {io.image_stem(p) for p in labels}
    for label in labels:
        shutil.copy(label, root / "labels")
    unlabelled = [p for p in sorted(SAMPLE_DATA.glob("case_*")) if io.image_stem(p) not in labelled]
    for path in sorted(SAMPLE_DATA.glob("case_*")):
        if io.image_stem(path) in labelled:
            shutil.copy(path, root / "images")
    for path in unlabelled[:3]:
        shutil.copy(path, root / "unlabeled")
    return {"images": root / "images", "labels": root / "labels", "unlabeled": root / "unlabeled"}


def test_tiny_run_prints_model_and_table(sample_folders, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--images", str(sample_folders["images"]), "--labels", str(sample_folders["labels"]), "--out", str(out)]
    args += ["--unlabeled", str(sample_folders["unlabeled"]), "--epochs", "1", "--pseudo-confidence", "0.5"]
    args += ["--pseudo-min-fraction", "0", "--pseudo-min-pixels", "0", "--val-fraction", "0.25", *TINY]
    assert main(["train", *args]) == 0
    printed = capsys.readouterr().out
    assert f"model: {out / 'model.pt'} (stage 3 pseudo-label retrain" in printed
    assert "pseudo-labels: 3 of 3 unlabelled image(s) accepted" in printed
    assert printed.count("| stage ") == 6  # 3 stages x (per-image mean, pooled)
    assert Predictor.from_file(out / "model.pt").spec.input_size == 64
    with (out / "history.csv").open() as f:
        assert [row["stage"] for row in csv.DictReader(f)] == ["1", "2", "3"]


def test_non_square_input_trains_and_predicts_on_the_scan_grid(sample_folders, tmp_path):
    """``--input-size 64x96`` (height x width): the model keeps it, and its masks come back on each scan's grid."""
    out = tmp_path / "run"
    args = ["--images", str(sample_folders["images"]), "--labels", str(sample_folders["labels"]), "--out", str(out)]
    args += ["--stages", "2", "--epochs", "1", "--val-fraction", "0.25", "--no-pretrained", *TINY]
    args[args.index("--input-size") + 1] = "64x96"
    assert main(["train", *args]) == 0
    predictor = Predictor.from_file(out / "model.pt")
    assert predictor.spec.input_size == (64, 96)
    image = sorted(sample_folders["images"].iterdir())[0]
    assert predictor.predict(image).mask.shape == io.read_image(image)[1].shape_hw


def test_input_size_that_is_no_shape_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["train", "--images", "a", "--labels", "b", "--input-size", "256x100"])
    assert exited.value.code == 2 and "'256x100'" in capsys.readouterr().err


def test_ddp_two_gloo_processes(sample_folders, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    command += ["-m", "sscase_monai", "train", "--images", str(sample_folders["images"])]
    command += ["--labels", str(sample_folders["labels"]), "--unlabeled", str(sample_folders["unlabeled"])]
    command += ["--out", str(out), "--epochs", "1", "--device", "cpu", "--pseudo-confidence", "0.5"]
    command += ["--pseudo-min-fraction", "0", "--pseudo-min-pixels", "0", *TINY]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.count("model: ") == 1  # only rank 0 reports
    assert "joined gloo process group: rank 0 of 2" in finished.stderr
    assert sorted(p.name for p in out.glob("*.pt")) == [
        "model.pt",
        "stage1_best.pt",
        "stage2_best.pt",
        "stage3_best.pt",
    ]
    with (out / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["stage"], r["epoch"]) for r in rows] == [("1", "1"), ("2", "1"), ("3", "1")]
    # 6 training images x 1 sample, split over two processes: every image is seen once per epoch in total
    assert float(rows[0]["images_per_second"]) > 0
    state = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    with (out / "pseudo_labels.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 3
