"""``sscase-monai predict`` end to end: real models, every image format, geometry kept, CSV, errors."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from written_models import constant_model, write_image

from sscase_monai import biometry, io
from sscase_monai.cli import main
from sscase_monai.model_files import ModelSpec

H, W = 60, 72  # not the network's size and not square: masks must come back on this grid


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    binary = ModelSpec(input_size=64)  # the default label: {"cerebellum": 1}
    two = ModelSpec.for_labels({"pubic_symphysis": 1, "head": 2}, input_size=64)
    return {
        "cerebellum": constant_model(root / "cerebellum" / "model.pt", binary, [10.0]),
        "head": constant_model(root / "head" / "model.pt", two, [0.0, 0.0, 10.0]),
    }


@pytest.fixture
def scans(tmp_path) -> Path:
    """One image per supported format; NIfTI as Slicer sends a 2-D scan (W x H x 1, rotated, off the origin)."""
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (H, W), dtype=np.uint8)
    folder = tmp_path / "scans"
    write_image(folder / "s_nii.nii.gz", gray[None], (0.3, 0.4, 1.0), (5.0, -7.0, 2.0), (0, 1, 0, -1, 0, 0, 0, 0, 1))
    write_image(folder / "s_nrrd.nrrd", gray, (0.25, 0.25), (1.0, 2.0))
    write_image(folder / "s_png.png", gray)
    write_image(folder / "s_jpg.jpg", gray)
    write_image(folder / "s_dcm.dcm", gray, (0.2, 0.2))
    return folder


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as f:
        return {Path(row["file"]).name: row for row in csv.DictReader(f)}


def test_every_format_keeps_its_geometry_and_gets_a_csv_row(scans, tmp_path, models, capsys):
    out = tmp_path / "masks"
    code = main(["predict", "--model", str(models["cerebellum"]), "--images", str(scans), "--out", str(out)])
    assert code == 0
    assert "wrote 5 mask(s)" in capsys.readouterr().out
    expected = {
        "s_nii.nii.gz": "s_nii.nii.gz",
        "s_nrrd.nrrd": "s_nrrd.nrrd",
        "s_png.png": "s_png.png",
        "s_jpg.jpg": "s_jpg.png",  # JPEG would blur label values
        "s_dcm.dcm": "s_dcm.nrrd",
    }
    for source, written in expected.items():
        mask, geometry = io.read_image(out / written)
        _, original = io.read_image(scans / source)
        assert geometry == original, source
        assert mask.dtype == np.uint8 and mask.shape == (H, W)
        assert np.all(mask == 1), source  # the label value of "cerebellum", everywhere
    rows = read_rows(out / "predictions.csv")
    assert set(rows) == set(expected)
    nii = rows["s_nii.nii.gz"]
    assert Path(nii["mask"]) == out / "s_nii.nii.gz"
    assert nii["spacing_source"] == "file" and float(nii["spacing_row_mm"]) == pytest.approx(0.4)
    assert int(nii["cerebellum_pixels"]) == H * W
    assert float(nii["cerebellum_area_mm2"]) == pytest.approx(H * W * 0.4 * 0.3, rel=1e-5)
    assert float(nii["tcd_mm"]) == pytest.approx(math.hypot(H * 0.4, W * 0.3), rel=1e-5)  # the whole image
    assert float(nii["confidence_fraction"]) == 1.0 and nii["error"] == ""
    assert rows["s_dcm.dcm"]["spacing_source"] == "file"
    assert "hc_mm" not in nii  # no head label
    png = rows["s_png.png"]
    assert png["spacing_source"] == "none" and png["cerebellum_area_mm2"] == "" and png["tcd_mm"] == ""


def test_single_file_with_tta_and_probabilities(scans, tmp_path, models):
    out = tmp_path / "one"
    image = scans / "s_nii.nii.gz"
    args = ["predict", "--model", str(models["cerebellum"]), "--images", str(image), "--out", str(out)]
    assert main([*args, "--tta", "--probabilities", "--batch-size", "1", "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv", "probabilities", "s_nii.nii.gz"]
    probability, geometry = io.read_image(out / "probabilities" / "s_nii.nii.gz")
    assert geometry == io.read_image(image)[1]
    assert probability.dtype == np.float32 and np.allclose(probability, 1 / (1 + math.exp(-10)), atol=1e-4)
    png_out = tmp_path / "png"
    assert main([*args[:3], "--images", str(scans / "s_png.png"), "--out", str(png_out), "--probabilities"]) == 0
    probability_png, _ = io.read_image(png_out / "probabilities" / "s_png.png")
    assert probability_png.dtype == np.uint8 and np.all(probability_png == 255)


def test_multi_class_masks_hold_label_values_and_a_table_gives_png_areas(scans, tmp_path, models):
    table = tmp_path / "sizes.csv"
    table.write_text("filename,pixel_size_mm\ns_png.png,0.5\n")
    out = tmp_path / "masks"
    args = ["predict", "--model", str(models["head"]), "--images", str(scans), "--out", str(out)]
    assert main([*args, "--pixel-size-csv", str(table)]) == 0
    mask, _ = io.read_image(out / "s_png.png")
    assert np.all(mask == 2)
    row = read_rows(out / "predictions.csv")["s_png.png"]
    assert "tcd_mm" not in row  # no label named cerebellum
    # the measurement columns are the library's, the ones evaluate writes
    measurement = list(biometry.biometry_columns(None, None, {"pubic_symphysis": 1, "head": 2}))
    columns = list(row)
    assert columns[columns.index("spacing_source") + 1 : columns.index("confidence_fraction")] == measurement
    assert row["hc_reliable"] in ("True", "False")
    assert row["spacing_source"] == "table"
    assert int(row["head_pixels"]) == H * W and int(row["pubic_symphysis_pixels"]) == 0
    assert float(row["head_area_mm2"]) == pytest.approx(H * W * 0.25)
    # HC of the head label (here the whole image): the moment ellipse of an n-pixel side has semi-axis
    # 2 sqrt((n^2 - 1) / 12) pixels
    semi = [2 * math.sqrt((n * n - 1) / 12) * 0.5 for n in (W, H)]
    assert float(row["hc_mm"]) == pytest.approx(biometry.ramanujan_perimeter(*semi), rel=1e-4)
    assert read_rows(out / "predictions.csv")["s_jpg.jpg"]["hc_mm"] == ""  # no spacing for it
    other = tmp_path / "other"
    assert (
        main(
            [
                "predict",
                "--model",
                str(models["head"]),
                "--images",
                str(scans),
                "--out",
                str(other),
                "--head-label",
                "skull",
            ]
        )
        == 0
    )
    assert "hc_mm" not in read_rows(other / "predictions.csv")["s_png.png"]


def test_unreadable_image_is_reported_and_the_rest_are_segmented(scans, tmp_path, models, capsys):
    (scans / "broken.png").write_bytes(b"this is not a png")
    out = tmp_path / "masks"
    code = main(["predict", "--model", str(models["cerebellum"]), "--images", str(scans), "--out", str(out)])
    assert code == 1
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "continuing" in captured.err
    assert "1 of 6 image(s) could not be segmented: broken.png" in captured.err
    assert "wrote 5 mask(s)" in captured.out
    assert not (out / "broken.png").exists() and (out / "s_png.png").is_file()
    rows = read_rows(out / "predictions.csv")
    assert "broken.png" in rows["broken.png"]["error"] and rows["broken.png"]["mask"] == ""
    assert rows["s_png.png"]["error"] == ""


def test_errors_name_the_file_and_exit_2(scans, tmp_path, models, capsys):
    model = str(models["cerebellum"])
    missing = tmp_path / "nowhere" / "model.pt"
    assert main(["predict", "--model", str(missing), "--images", str(scans), "--out", str(tmp_path / "o")]) == 2
    assert f"sscase-monai predict: error: model file {missing} not found" in capsys.readouterr().err
    assert main(["predict", "--model", model, "--images", str(tmp_path / "absent"), "--out", str(tmp_path)]) == 2
    assert "absent: no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--model", model, "--images", str(tmp_path / "empty"), "--out", str(tmp_path)]) == 2
    assert "empty: no image files" in capsys.readouterr().err
    assert main(["predict", "--model", model, "--images", str(scans), "--out", str(scans)]) == 2
    assert "would overwrite the input image" in capsys.readouterr().err
    write_image(scans / "s_png.jpg", np.zeros((H, W), np.uint8))  # s_png.jpg and s_png.png -> both s_png.png
    assert main(["predict", "--model", model, "--images", str(scans), "--out", str(tmp_path / "o")]) == 2
    assert "would both be written to" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written before the checks pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(scans, tmp_path, models, capsys):
    args = ["predict", "--model", str(models["cerebellum"]), "--images", str(scans), "--out", str(tmp_path / "o")]
    assert main([*args, "--device", "cuda"]) == 2
    assert "--device cuda: CUDA is not available on this machine" in capsys.readouterr().err


def test_help_explains_formats_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "JPEG" in text and "DICOM" in text and "predictions.csv" in text
    assert "1 when some images could not be read" in text


def test_command_runs_as_a_module(scans, tmp_path, models):
    out = tmp_path / "sub"
    result = subprocess.run(
        [sys.executable, "-m", "sscase_monai", "predict", "--model", str(models["cerebellum"]),
         "--images", str(scans / "s_nrrd.nrrd"), "--out", str(out), "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (out / "s_nrrd.nrrd").is_file() and (out / "predictions.csv").is_file()
