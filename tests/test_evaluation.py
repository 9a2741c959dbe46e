"""Tests for sscase_monai.evaluation: real models (constant-output and untrained) on small written images."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from written_models import constant_model, write_image

from sscase_monai import io
from sscase_monai.data import pair_images_with_labels
from sscase_monai.evaluation import (
    evaluate_model,
    file_pixel_spacing,
    find_pixel_size_csv,
    read_label,
    read_pixel_size_csv,
    resolve_pixel_spacing,
)
from sscase_monai.inference import Predictor
from sscase_monai.metrics import per_image_metrics, segmentation_metrics
from sscase_monai.model_files import ModelSpec, save_model

SPACING_XY = (0.3, 0.4)  # ITK order (columns, rows): pixel_spacing_hw = (0.4, 0.3)


def labelled_set(root: Path, sizes: list[int], ext: str = ".nii.gz", scale: int = 1) -> list[dict[str, str]]:
    """Images of 60x72 noise with a square label of each given side; returns pairs."""
    rng = np.random.default_rng(0)
    for i, side in enumerate(sizes):
        image = rng.integers(0, 255, (60, 72), dtype=np.uint8)
        label = np.zeros((60, 72), np.uint8)
        label[10 : 10 + side, 20 : 20 + side] = scale
        volume = ext == ".nii.gz"
        spacing = SPACING_XY if volume else None
        write_image(root / "images" / f"case_{i}{ext}", image, spacing, volume=volume)
        write_image(root / "labels" / f"case_{i}{ext}", label, spacing, volume=volume)
    return pair_images_with_labels(root / "images", root / "labels")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    binary = ModelSpec(input_size=64)
    three = ModelSpec.for_labels({"pubic_symphysis": 1, "head": 2}, input_size=64)
    return {
        "foreground": constant_model(root / "foreground" / "model.pt", binary, [10.0]),
        "background": constant_model(root / "background" / "model.pt", binary, [-10.0]),
        "class1": constant_model(root / "class1" / "model.pt", three, [0.0, 10.0, 0.0]),
        "untrained": save_model(root / "untrained" / "model.pt", binary.build_network(), binary),
    }


def test_scores_on_the_original_grid_match_the_metrics_module(tmp_path, models):
    pairs = labelled_set(tmp_path, [8, 20, 30, 14])
    predictor = Predictor.from_file(models["foreground"], device="cpu")
    result = evaluate_model(predictor, pairs, batch_size=3)
    assert result.hd95_unit == "mm" and result.spacing_sources == {"file": 4, "table": 0, "none": 0}
    assert [r["name"] for r in result.records] == ["case_0", "case_1", "case_2", "case_3"]
    for record, side in zip(result.records, [8, 20, 30, 14], strict=True):
        assert (record["height"], record["width"]) == (60, 72)  # the original grid, not the network's 64x64
        assert (record["spacing_row_mm"], record["spacing_col_mm"]) == pytest.approx((0.4, 0.3))
        assert record["dice"] == pytest.approx(2 * side**2 / (side**2 + 60 * 72))  # everything predicted
        assert record["recall"] == 1.0 and record["hd95_unit"] == "mm"
    predictions = [predictor.predict(p["image"]).mask for p in pairs]
    labels = [read_label(p["label"], 2) for p in pairs]
    expected = segmentation_metrics(predictions, labels, 2, spacing=[(0.4, 0.3)] * 4)
    assert result.metrics["mean"] == pytest.approx(expected["mean"], nan_ok=True)
    assert result.metrics["pooled"] == pytest.approx(expected["pooled"], nan_ok=True)
    direct = per_image_metrics(predictions, labels, 2, spacing=[(0.4, 0.3)] * 4)
    assert [r["hd95"] for r in result.records] == pytest.approx([r["hd95"] for r in direct])
    assert result.cases == []  # nothing kept unless asked


def test_keeps_best_and_worst_cases_without_repeating_one(tmp_path, models):
    pairs = labelled_set(tmp_path, [8, 20, 30, 14])
    predictor = Predictor.from_file(models["foreground"], device="cpu")
    result = evaluate_model(predictor, pairs, keep_cases=3, tta=True)
    kinds = [(c.kind, c.rank, c.name) for c in result.cases]
    # Dice grows with the label's size under an all-foreground prediction
    assert kinds == [("best", 1, "case_2"), ("best", 2, "case_1"), ("best", 3, "case_3"), ("worst", 1, "case_0")]
    case = result.cases[0]
    assert case.label_mask.shape == case.prediction_mask.shape == (60, 72)
    assert case.label_mask.sum() == 900 and case.prediction_mask.all()


def test_png_hd95_is_in_pixels_unless_a_table_gives_the_pixel_size(tmp_path, models):
    pairs = labelled_set(tmp_path, [8, 20], ext=".png", scale=255)  # {0, 255} labels
    predictor = Predictor.from_file(models["foreground"], device="cpu")
    in_pixels = evaluate_model(predictor, pairs)
    assert in_pixels.hd95_unit == "px" and in_pixels.metrics["hd95_unit"] == "px"
    assert "HD95 in pixels: 2 of 2 image(s) have no pixel spacing" in in_pixels.hd95_note()
    in_mm = evaluate_model(predictor, pairs, spacing_lookup={"case_0.png": 0.5, "case_1": (0.5, 0.5)})
    assert in_mm.hd95_unit == "mm" and in_mm.spacing_sources["table"] == 2
    assert [r["hd95"] for r in in_mm.records] == pytest.approx([0.5 * r["hd95"] for r in in_pixels.records])
    assert in_mm.records[0]["dice"] == in_pixels.records[0]["dice"]


def test_one_image_without_spacing_puts_every_hd95_in_pixels(tmp_path, models):
    labelled_set(tmp_path, [8, 20])
    labelled_set(tmp_path / "png", [10], ext=".png")
    (tmp_path / "png" / "images" / "case_0.png").rename(tmp_path / "images" / "flat.png")
    (tmp_path / "png" / "labels" / "case_0.png").rename(tmp_path / "labels" / "flat.png")
    pairs = pair_images_with_labels(tmp_path / "images", tmp_path / "labels")
    result = evaluate_model(Predictor.from_file(models["foreground"], device="cpu"), pairs)
    assert result.hd95_unit == "px"
    assert result.spacing_sources == {"file": 2, "table": 0, "none": 1}
    assert "flat" in result.hd95_note()


def test_empty_prediction_makes_hd95_undefined_and_says_so(tmp_path, models):
    pairs = labelled_set(tmp_path, [8, 20])
    result = evaluate_model(Predictor.from_file(models["background"], device="cpu"), pairs)
    assert all(r["dice"] == 0.0 and math.isnan(r["hd95"]) for r in result.records)
    assert "undefined for 2 image(s)" in result.hd95_note()
    result.write_csv(tmp_path / "out.csv")
    with (tmp_path / "out.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["hd95"] == "" and rows[0]["dice"] == "0.0"


def test_multi_class_labels_use_the_models_classes(tmp_path, models):
    rng = np.random.default_rng(1)
    label = np.zeros((48, 40), np.uint8)
    label[5:20, 5:20] = 1
    label[25:45, 10:30] = 2
    write_image(tmp_path / "images" / "a.png", rng.integers(0, 255, (48, 40), dtype=np.uint8))
    write_image(tmp_path / "labels" / "a.png", label)
    pairs = pair_images_with_labels(tmp_path / "images", tmp_path / "labels")
    result = evaluate_model(Predictor.from_file(models["class1"], device="cpu"), pairs)
    record = result.records[0]
    assert result.num_classes == 3
    assert record["dice_class1"] == pytest.approx(2 * 225 / (225 + 48 * 40))
    assert record["dice_class2"] == 0.0
    assert set(result.metrics["per_class"]) == {"1", "2"}


def test_bad_labels_and_sizes_name_the_file(tmp_path, models):
    pairs = labelled_set(tmp_path, [8])
    predictor = Predictor.from_file(models["untrained"], device="cpu")
    write_image(Path(pairs[0]["label"]), np.full((60, 72), 3, np.uint8), SPACING_XY, volume=True)
    with pytest.raises(ValueError, match=r"case_0\.nii\.gz.*outside"):
        evaluate_model(predictor, pairs)
    write_image(Path(pairs[0]["label"]), np.zeros((50, 72), np.uint8), SPACING_XY, volume=True)
    with pytest.raises(ValueError, match=r"label .*case_0\.nii\.gz has \(H, W\) = \(50, 72\)"):
        evaluate_model(predictor, pairs)
    with pytest.raises(ValueError, match="no labelled images"):
        evaluate_model(predictor, [])


def test_pixel_size_tables(tmp_path):
    hc18 = tmp_path / "train"
    (hc18 / "images").mkdir(parents=True)
    table = hc18 / "pixel_size_and_hc.csv"
    table.write_text("filename,pixel_size_mm,head_circumference_mm\n006_HC.png,0.0656,67.84\n012_HC.png,0.0834,59.4\n")
    assert find_pixel_size_csv(hc18 / "images") == table
    assert find_pixel_size_csv(hc18 / "images" / "006_HC.png") == table
    assert read_pixel_size_csv(table) == {"006_HC": (0.0656, 0.0656), "012_HC": (0.0834, 0.0834)}
    # the sample data's metadata.csv inside the images folder
    sample = tmp_path / "studies"
    sample.mkdir()
    (sample / "metadata.csv").write_text("file,label,pixel_spacing_mm\ncase_1.png,,0.375\n")
    assert read_pixel_size_csv(find_pixel_size_csv(sample)) == {"case_1": (0.375, 0.375)}
    unrelated = tmp_path / "other"
    unrelated.mkdir()
    (unrelated / "metadata.csv").write_text("a,b\n1,2\n")
    assert find_pixel_size_csv(unrelated) is None
    with pytest.raises(ValueError, match=r"metadata\.csv.*file-name column"):
        read_pixel_size_csv(unrelated / "metadata.csv")
    (unrelated / "bad.csv").write_text("filename,pixel_size_mm\nx.png,-1\n")
    with pytest.raises(ValueError, match=r"bad\.csv, line 2: pixel size of x\.png"):
        read_pixel_size_csv(unrelated / "bad.csv")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_pixel_size_csv(unrelated / "missing.csv")


def test_where_a_spacing_comes_from(tmp_path):
    array = np.zeros((10, 12), np.uint8)
    nifti = write_image(tmp_path / "a.nii.gz", array, SPACING_XY, volume=True)
    png = write_image(tmp_path / "b.png", array)
    dicom_default = write_image(tmp_path / "c.dcm", array)
    dicom = write_image(tmp_path / "d.dcm", array, (0.2, 0.2))
    geometry = {p: io.read_image(p)[1] for p in (nifti, png, dicom_default, dicom)}
    assert file_pixel_spacing(nifti, geometry[nifti]) == pytest.approx((0.4, 0.3))
    assert file_pixel_spacing(png, geometry[png]) is None
    assert file_pixel_spacing(dicom_default, geometry[dicom_default]) is None
    assert file_pixel_spacing(dicom, geometry[dicom]) == pytest.approx((0.2, 0.2))
    assert resolve_pixel_spacing(png, geometry[png], {"b": 0.1}) == ((0.1, 0.1), "table")
    assert resolve_pixel_spacing(png, geometry[png], {"other": 0.1}) == (None, "none")
    spacing, source = resolve_pixel_spacing(nifti, geometry[nifti], {"a": 9.0})  # the file wins (with a warning)
    assert source == "file" and spacing == pytest.approx((0.4, 0.3))


@pytest.mark.data
def test_real_hc18_images_get_mm_from_the_challenge_table(shared_data, models):
    val = shared_data / "hc18" / "val"
    names = sorted(p.name for p in (val / "images").glob("*.png"))[:3]
    pairs = [{"image": str(val / "images" / n), "label": str(val / "labels" / n)} for n in names]
    lookup = read_pixel_size_csv(find_pixel_size_csv(val / "images"))
    result = evaluate_model(Predictor.from_file(models["foreground"], device="cpu"), pairs, spacing_lookup=lookup)
    assert result.hd95_unit == "mm" and result.spacing_sources["table"] == 3
    for record in result.records:
        label = read_label(record["label"], 2)
        assert (record["height"], record["width"]) == label.shape
        assert record["dice"] == pytest.approx(2 * label.sum() / (label.sum() + label.size))


def test_hc_agreement_with_and_without_the_flagged_hcs():
    from sscase_monai.evaluation import format_hc_agreement, hc_agreement

    reference = {"a": 100.0, "b": 150.0, "c": 200.0, "d": 250.0}
    records = [
        {"name": "a", "hc_mm": 101.0, "hc_reliable": True, "label_hc_mm": 100.1, "label_hc_reliable": True},
        {"name": "b", "hc_mm": 158.0, "hc_reliable": False, "label_hc_mm": 150.1, "label_hc_reliable": True},
        {"name": "c", "hc_mm": 197.0, "hc_reliable": True, "label_hc_mm": 199.9, "label_hc_reliable": True},
        {"name": "d", "hc_mm": None, "hc_reliable": None, "label_hc_mm": 250.0, "label_hc_reliable": True},
        {"name": "e", "hc_mm": 90.0, "hc_reliable": True},  # no reference
    ]
    summary = hc_agreement(records, reference)
    assert summary["n"] == 3 and summary["missing"] == 2 and summary["flagged"] == 1 and summary["limit_mm"] == 5.0
    everything, kept = summary["prediction"], summary["prediction_reliable"]
    assert everything["mean_abs_diff_mm"] == pytest.approx(4.0) and everything["over_limit"] == 1
    assert everything["median_abs_diff_mm"] == pytest.approx(3.0) and everything["max_abs_diff_mm"] == 8.0
    assert kept["n"] == 2 and kept["mean_abs_diff_mm"] == pytest.approx(2.0) and kept["over_limit"] == 0
    assert summary["ground_truth"]["n"] == 4
    assert summary["ground_truth"]["mean_abs_diff_mm"] == pytest.approx(0.075)
    text = format_hc_agreement(summary)
    assert "prediction 4.00 mm (1 over 5 mm)" in text
    assert "1 prediction(s) flagged unreliable, without them prediction 2.00 mm (0 over 5 mm)" in text
