"""``sscase-monai evaluate`` end to end: the table printed, the CSV, the report, HD95 units, errors."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from written_models import constant_model, write_image

from sscase_monai import biometry
from sscase_monai.cli import main
from sscase_monai.model_files import ModelSpec

SIDES = [8, 16, 24, 32]  # label squares in 60x72 images: an all-foreground model's Dice grows with the side
H, W = 60, 72
HISTORY = (
    "stage,epoch,train_loss,val_loss,val_dice,lr\n1,0,0.9,1.0,0.4,1e-4\n1,1,0.6,0.7,0.6,1e-4\n2,0,0.5,0.6,0.7,1e-5\n"
)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = constant_model(tmp_path_factory.mktemp("run") / "model.pt", ModelSpec(input_size=64), [10.0])
    (path.parent / "history.csv").write_text(HISTORY)
    return path


def dataset(root: Path, ext: str = ".nii.gz", label_value: int = 1) -> tuple[Path, Path]:
    """``root/images`` + ``root/labels``: NIfTI as W x H x 1 with spacing 0.5 mm, or plain PNG."""
    rng = np.random.default_rng(0)
    for i, side in enumerate(SIDES):
        image = rng.integers(0, 255, (H, W), dtype=np.uint8)
        label = np.zeros((H, W), np.uint8)
        label[10 : 10 + side, 20 : 20 + side] = label_value
        if ext == ".nii.gz":
            image, label, spacing = image[None], label[None], (0.5, 0.5, 1.0)
        else:
            spacing = None
        write_image(root / "images" / f"case_{i}{ext}", image, spacing)
        write_image(root / "labels" / f"case_{i}{ext}", label, spacing)
    return root / "images", root / "labels"


def expected_dice(side: int) -> float:
    return 2 * side**2 / (side**2 + H * W)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_table_csv_and_report(tmp_path, model, capsys):
    images, labels = dataset(tmp_path)
    report = tmp_path / "report"
    args = ["evaluate", "--model", str(model), "--images", str(images), "--labels", str(labels)]
    assert main([*args, "--report", str(report), "--device", "cpu", "--batch-size", "3"]) == 0
    out = capsys.readouterr().out
    assert (
        "| method | aggregation | accuracy (%) | precision (%) | recall (%) | Jaccard (%) | Dice (%) | HD95 (mm) |"
        in out
    )
    assert "| SS_CASE_UNet | per-image mean |" in out and "| SS_CASE_UNet | pooled |" in out
    assert "HD95 in mm (pixel spacing of 4 from the image files)" in out
    mean_dice = 100 * np.mean([expected_dice(s) for s in SIDES])
    assert f"| {mean_dice:.2f} |" in out
    rows = read_csv(report / "evaluation.csv")  # the default CSV goes into the report folder
    assert [r["name"] for r in rows] == [f"case_{i}" for i in range(4)]
    assert [float(r["dice"]) for r in rows] == pytest.approx([expected_dice(s) for s in SIDES], abs=1e-6)
    assert {r["hd95_unit"] for r in rows} == {"mm"} and {r["height"] for r in rows} == {str(H)}
    pictures = sorted(p.name for p in report.glob("*.png"))
    assert pictures == [
        "best_1_case_3.png",
        "best_2_case_2.png",
        "best_3_case_1.png",
        "dice_histogram.png",
        "learning_curve_1.png",
        "learning_curve_2.png",
        "worst_1_case_0.png",
    ]
    for name in pictures:
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(report / name).shape[1] >= 400
    index = (report / "index.md").read_text()
    assert all(f"({name})" in index for name in pictures) and "test-time augmentation: `no`" in index
    assert (report / "index.html").is_file()


def test_default_csv_in_the_working_directory_and_tta_row_name(tmp_path, model, capsys, monkeypatch):
    images, labels = dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--model", str(model), "--images", str(images), "--labels", str(labels), "--tta"]) == 0
    assert "| SS_CASE_UNet + TTA | per-image mean |" in capsys.readouterr().out
    assert len(read_csv(tmp_path / "evaluation.csv")) == 4
    custom = tmp_path / "deep" / "scores.csv"
    args = ["evaluate", "--model", str(model), "--images", str(images), "--labels", str(labels)]
    assert main([*args, "--csv", str(custom)]) == 0
    assert len(read_csv(custom)) == 4


def test_png_hd95_in_pixels_or_mm_from_the_hc18_table(tmp_path, model, capsys):
    images, labels = dataset(tmp_path / "train", ext=".png", label_value=255)  # {0, 255} labels
    args = ["evaluate", "--model", str(model), "--images", str(images), "--labels", str(labels)]
    assert main([*args, "--csv", str(tmp_path / "px.csv")]) == 0
    out = capsys.readouterr().out
    assert "HD95 (px)" in out and "HD95 in pixels: 4 of 4 image(s) have no pixel spacing" in out
    sizes = "filename,pixel_size_mm,head_circumference_mm\n" + "".join(f"case_{i}.png,0.25,100\n" for i in range(4))
    (tmp_path / "train" / "pixel_size_and_hc.csv").write_text(sizes)  # found beside the images folder
    assert main([*args, "--csv", str(tmp_path / "mm.csv")]) == 0
    out = capsys.readouterr().out
    assert "HD95 (mm)" in out and "4 from a pixel-size table" in out
    px, mm = read_csv(tmp_path / "px.csv"), read_csv(tmp_path / "mm.csv")
    assert [float(r["hd95"]) for r in mm] == pytest.approx([0.25 * float(r["hd95"]) for r in px], rel=1e-5)
    explicit = tmp_path / "sizes.csv"
    explicit.write_text("filename,pixel_size_mm\n" + "".join(f"case_{i}.png,0.5\n" for i in range(4)))
    assert main([*args, "--csv", str(tmp_path / "explicit.csv"), "--pixel-size-csv", str(explicit)]) == 0
    assert {r["spacing_row_mm"] for r in read_csv(tmp_path / "explicit.csv")} == {"0.5"}


def test_missing_and_bad_labels_are_errors_naming_the_file(tmp_path, model, capsys):
    images, labels = dataset(tmp_path)
    args = ["evaluate", "--model", str(model), "--images", str(images), "--labels", str(labels)]
    (labels / "case_2.nii.gz").rename(tmp_path / "moved.nii.gz")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "sscase-monai evaluate: error:" in err and "case_2.nii.gz" in err and "no label" in err
    write_image(labels / "case_2.nii.gz", np.full((1, H, W), 7, np.uint8), (0.5, 0.5, 1.0))  # not a binary label
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{labels / 'case_2.nii.gz'}: label values [7]" in err and "outside the 2 configured classes" in err
    write_image(labels / "case_2.nii.gz", np.zeros((1, H - 1, W), np.uint8), (0.5, 0.5, 1.0))
    assert main(args) == 2
    assert "has (H, W) = (59, 72)" in capsys.readouterr().err


def test_bad_folder_and_missing_model(tmp_path, model, capsys):
    images, labels = dataset(tmp_path)
    assert main(["evaluate", "--model", str(model), "--images", str(tmp_path / "nope"), "--labels", str(labels)]) == 2
    assert "nope: no such folder" in capsys.readouterr().err
    missing = tmp_path / "missing.pt"
    assert main(["evaluate", "--model", str(missing), "--images", str(images), "--labels", str(labels)]) == 2
    assert f"model file {missing} not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", str(model), "--images", str(images), "--labels", str(labels), "--device", "gpu"])
    assert "expected auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_command_runs_as_a_module(tmp_path, model):
    images, labels = dataset(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "sscase_monai", "evaluate", "--model", str(model), "--images", str(images),
         "--labels", str(labels), "--csv", str(tmp_path / "e.csv"), "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "| SS_CASE_UNet | pooled |" in result.stdout
    assert len(read_csv(tmp_path / "e.csv")) == 4


def square_hc_mm(side: int, spacing: float) -> float:
    """The library's HC of :func:`dataset`'s square label of ``side`` pixels (the ellipse fitted to its boundary)."""
    mask = np.zeros((H, W), np.uint8)
    mask[10 : 10 + side, 20 : 20 + side] = 1
    return biometry.ellipse_circumference_mm(mask, spacing)


def test_tcd_and_hc_columns_and_the_mean_absolute_hc_difference_from_a_reference(tmp_path, model, capsys):
    images, labels = dataset(tmp_path)  # NIfTI, 0.5 mm: squares of SIDES pixels as labels
    args = ["evaluate", "--images", str(images), "--labels", str(labels), "--device", "cpu"]
    assert main([*args, "--model", str(model), "--csv", str(tmp_path / "tcd.csv")]) == 0
    rows = read_csv(tmp_path / "tcd.csv")
    assert [float(r["label_tcd_mm"]) for r in rows] == pytest.approx([s * math.sqrt(2) * 0.5 for s in SIDES], abs=1e-3)
    assert [float(r["tcd_mm"]) for r in rows] == pytest.approx([math.hypot(H, W) * 0.5] * 4, abs=1e-3)  # all of it
    assert "hc_mm" not in rows[0]

    head = constant_model(tmp_path / "head" / "model.pt", ModelSpec.for_labels({"head": 1}, input_size=64), [10.0])
    offsets = [1.0, -2.0, 0.5, 2.5]
    reference = tmp_path / "pixel_size_and_hc.csv"
    reference.write_text(
        "filename,pixel_size_mm,head_circumference_mm\n"
        + "".join(
            f"case_{i}.png,0.5,{square_hc_mm(s, 0.5) + d:.6f}\n"
            for i, (s, d) in enumerate(zip(SIDES, offsets, strict=True))
        )
    )
    csv_path = tmp_path / "hc.csv"
    assert main([*args, "--model", str(head), "--csv", str(csv_path), "--reference-csv", str(reference)]) == 0
    out = capsys.readouterr().out
    rows = read_csv(csv_path)
    assert [float(r["label_hc_mm"]) for r in rows] == pytest.approx([square_hc_mm(s, 0.5) for s in SIDES], abs=1e-3)
    assert [float(r["label_hc_abs_diff_mm"]) for r in rows] == pytest.approx([abs(d) for d in offsets], abs=2e-3)
    predicted = float(rows[0]["hc_mm"])  # the whole image: a 72 x 60 pixel rectangle
    semi = [2 * math.sqrt((n * n - 1) / 12) * 0.5 for n in (W, H)]
    assert predicted == pytest.approx(biometry.ramanujan_perimeter(*semi), rel=1e-4)
    refs = [float(r["reference_hc_mm"]) for r in rows]
    prediction_mad = float(np.mean([abs(predicted - ref) for ref in refs]))
    assert f"HC vs reference (4 image(s)): mean absolute difference prediction {prediction_mad:.2f} mm" in out
    assert f"ground-truth masks {np.mean(np.abs(offsets)):.2f} mm (0 over 5 mm)" in out
    # the whole-image prediction runs past the image edge: flagged, and said so
    assert {r["hc_reliable"] for r in rows} == {"False"} and "touches the image edge" in rows[0]["hc_reasons"]
    # the measurement columns are the library's (the ones predict writes), for the prediction and the ground truth
    for prefix in ("", "label_"):
        measurement = list(biometry.biometry_columns(None, None, {"head": 1}, prefix=prefix))
        start = list(rows[0]).index(measurement[0])
        assert list(rows[0])[start : start + len(measurement)] == measurement
    assert "4 prediction(s) flagged unreliable" in out
    bad = tmp_path / "bad.csv"
    bad.write_text("filename,pixel_size_mm\ncase_0.png,0.5\n")
    assert main([*args, "--model", str(head), "--reference-csv", str(bad)]) == 2
    assert "head circumference column" in capsys.readouterr().err
