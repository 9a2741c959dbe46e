"""Tests for sscase_monai.report: real PNGs from real evaluations, the training history, the index files."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from sscase_monai.data import pair_images_with_labels
from sscase_monai.evaluation import evaluate_model
from sscase_monai.inference import Predictor
from sscase_monai.model_files import ModelSpec, save_model
from sscase_monai.report import (
    find_history,
    read_history,
    save_dice_histogram,
    save_learning_curves,
    save_overlay,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HISTORY = (
    "stage,epoch,train_loss,val_loss,val_dice,lr,seconds\n"
    "decoder,0,0.9,1.0,0.40,1e-4,3.1\n"
    "decoder,1,0.7,0.8,0.55,1e-4,3.0\n"
    "decoder,2,0.6,0.85,0.52,5e-5,3.2\n"
    "full fine-tune,0,0.5,0.6,0.70,1e-5,4.0\n"
    "full fine-tune,1,0.4,,0.72,1e-5,4.1\n"
)


def assert_png(path: Path, min_width: int = 200) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[1] >= min_width, pixels.shape
    assert pixels.std() > 0.01, f"{path} is blank"
    return pixels


def test_overlay_of_binary_and_multi_class_masks(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (90, 120), dtype=np.uint8)
    label = np.zeros((90, 120), np.uint8)
    label[20:60, 30:80] = 1
    prediction = np.roll(label, 5, axis=1)
    path = save_overlay(image, label, prediction, tmp_path / "overlay.png", title="case Dice 90%")
    assert_png(path, min_width=800)
    label[70:85, 10:40] = 2
    rgb = np.stack([image] * 3, axis=-1)
    assert_png(save_overlay(rgb, label, np.zeros_like(label), tmp_path / "sub" / "three.png", num_classes=3))


def test_dice_histogram_tolerates_nan_and_empty(tmp_path):
    assert_png(save_dice_histogram([0.9, 0.8, float("nan"), 0.1], tmp_path / "h.png"))
    assert_png(save_dice_histogram([], tmp_path / "empty.png"))


def test_history_is_grouped_by_stage_with_missing_cells_as_nan(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text(HISTORY)
    stages = read_history(path)
    assert list(stages) == ["decoder", "full fine-tune"]
    assert stages["decoder"]["epoch"] == [0, 1, 2]
    assert stages["decoder"]["val_dice"] == [0.40, 0.55, 0.52]
    assert math.isnan(stages["full fine-tune"]["val_loss"][1])
    assert "seconds" not in stages["decoder"]  # extra trainer columns are ignored
    curves = save_learning_curves(path, tmp_path / "curves")
    assert [p.name for p in curves] == ["learning_curve_decoder.png", "learning_curve_full_fine-tune.png"]
    for curve in curves:
        assert_png(curve, min_width=1000)
    (tmp_path / "no_stage.csv").write_text("epoch,train_loss\n0,1.0\n1,0.5\n")
    assert list(read_history(tmp_path / "no_stage.csv")) == ["training"]
    (tmp_path / "bad.csv").write_text("step,loss\n0,1\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*'epoch'"):
        read_history(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_history(tmp_path / "missing.csv")


def make_evaluation(tmp_path: Path, history: str | None):
    """A real evaluation of a constant (all-foreground) model on four small NIfTI images."""
    rng = np.random.default_rng(0)
    for i, side in enumerate([6, 12, 18, 24, 30]):
        image = rng.integers(0, 255, (1, 50, 60), dtype=np.uint8)
        label = np.zeros((1, 50, 60), np.uint8)
        label[0, 5 : 5 + side, 10 : 10 + side] = 1
        for folder, array in (("images", image), ("labels", label)):
            (tmp_path / folder).mkdir(exist_ok=True)
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing((0.5, 0.5, 1.0))
            sitk.WriteImage(itk, str(tmp_path / folder / f"img{i}.nii.gz"))
    spec = ModelSpec(input_size=64)
    network = spec.build_network()
    with torch.no_grad():
        network.head.output.weight.zero_()
        network.head.output.bias.fill_(10.0)
    model = save_model(tmp_path / "run" / "model.pt", network, spec)
    if history is not None:
        (model.parent / "history.csv").write_text(history)
    pairs = pair_images_with_labels(tmp_path / "images", tmp_path / "labels")
    return model, evaluate_model(Predictor.from_file(model, device="cpu"), pairs, keep_cases=3)


def test_report_lists_every_picture_it_writes(tmp_path):
    model, result = make_evaluation(tmp_path, HISTORY)
    assert find_history(model) == model.parent / "history.csv"
    index = write_report(result, tmp_path / "report", model_path=model, details={"images": "imgs"})
    report = index.parent
    pictures = sorted(p.name for p in report.glob("*.png"))
    assert pictures == [
        "best_1_img4.png",
        "best_2_img3.png",
        "best_3_img2.png",
        "dice_histogram.png",
        "learning_curve_decoder.png",
        "learning_curve_full_fine-tune.png",
        "worst_1_img0.png",
        "worst_2_img1.png",
    ]
    for name in pictures:
        assert_png(report / name)
    markdown = index.read_text()
    html = (report / "index.html").read_text()
    for name in pictures:
        assert f"({name})" in markdown and f'src="{name}"' in html
    assert "| method | aggregation |" in markdown and "HD95 (mm)" in markdown and "<th>HD95 (mm)</th>" in html
    assert "- images: `imgs`" in markdown and str(model) in markdown
    assert "best 1: img4 (Dice 46.15%" in markdown  # all-foreground: 2 * 900 / (900 + 50 * 60)
    assert "**stage full fine-tune**" in markdown


def test_report_without_history_says_so(tmp_path):
    model, result = make_evaluation(tmp_path, history=None)
    assert find_history(model) is None
    index = write_report(result, tmp_path / "report", model_path=model)
    assert "no history.csv beside the model file" in index.read_text()
    assert not list(index.parent.glob("learning_curve_*.png"))
