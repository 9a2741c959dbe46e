"""Tests for sscase_monai.metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric

from sscase_monai.metrics import (
    METRIC_NAMES,
    dice_per_image,
    format_metrics_table,
    format_per_class_table,
    per_image_metrics,
    segmentation_metrics,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

pytestmark = pytest.mark.filterwarnings("error::UserWarning")  # MONAI's empty-mask warnings must not fire


def square(top: int, left: int, size: int = 20, shape: tuple[int, int] = (32, 32)) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.int64)
    mask[top : top + size, left : left + size] = 1
    return mask


# Target: 20x20 square at (5, 5); prediction: the same square 3 columns to the right, in a 32x32 image.
# Overlap 20 x 17 = 340 -> TP 340, FP 60, FN 60, TN 1024 - 460 = 564.
TARGET = square(5, 5)
SHIFTED = square(5, 8)
SHIFTED_EXPECTED = {
    "accuracy": (340 + 564) / 1024,
    "precision": 340 / 400,
    "recall": 340 / 400,
    "jaccard": 340 / 460,
    "dice": 680 / 800,
    "hd95": 3.0,
}


def test_known_overlap_and_hd95_of_a_shift() -> None:
    result = segmentation_metrics(SHIFTED[None], TARGET[None])
    for aggregation in ("mean", "pooled"):
        assert result[aggregation] == pytest.approx(SHIFTED_EXPECTED)
    assert result["num_images"] == 1
    assert result["hd95_unit"] == "px"
    assert result["hd95_undefined"] == 0
    assert result["hd95_pooled_images"] == 1

    records = per_image_metrics(SHIFTED[None], TARGET[None])
    assert records[0]["tp"] == 340 and records[0]["fp"] == 60 and records[0]["fn"] == 60 and records[0]["tn"] == 564


def test_dice_agrees_with_monai_dice_metric() -> None:
    pred = torch.as_tensor(SHIFTED)[None, None]
    target = torch.as_tensor(TARGET)[None, None]
    monai_dice = DiceMetric(include_background=False)(
        torch.cat([1 - pred, pred], dim=1), torch.cat([1 - target, target], dim=1)
    )
    assert segmentation_metrics(pred, target)["mean"]["dice"] == pytest.approx(monai_dice.item())


def test_vertical_shift_and_spacing() -> None:
    down = square(8, 5)
    assert segmentation_metrics(down[None], TARGET[None])["mean"]["hd95"] == pytest.approx(3.0)
    # spacing is (row, col): a 3-column shift is 3 * col spacing
    in_mm = segmentation_metrics([SHIFTED], [TARGET], spacing=[(1.0, 2.0)])
    assert in_mm["mean"]["hd95"] == pytest.approx(6.0)
    assert in_mm["hd95_unit"] == "mm"
    assert segmentation_metrics([SHIFTED], [TARGET], spacing=(2.0, 1.0))["mean"]["hd95"] == pytest.approx(3.0)
    assert segmentation_metrics([SHIFTED], [TARGET], spacing=0.5)["mean"]["hd95"] == pytest.approx(1.5)
    per_image = segmentation_metrics(
        [SHIFTED, SHIFTED], [TARGET, TARGET], spacing=[np.float32(2.0), np.array([1.0, 0.5])]
    )
    assert per_image["mean"]["hd95"] == pytest.approx((6.0 + 1.5) / 2)


def test_perfect_prediction() -> None:
    result = segmentation_metrics(TARGET[None], TARGET[None])
    assert result["mean"] == pytest.approx({m: (0.0 if m == "hd95" else 1.0) for m in METRIC_NAMES})


def test_both_empty_is_perfect() -> None:
    empty = np.zeros((1, 16, 16), dtype=np.int64)
    result = segmentation_metrics(empty, empty)
    expected = {m: (0.0 if m == "hd95" else 1.0) for m in METRIC_NAMES}
    assert result["mean"] == pytest.approx(expected)
    assert result["pooled"]["dice"] == 1.0
    assert math.isnan(result["pooled"]["hd95"])  # no image with both masks non-empty
    assert result["hd95_undefined"] == 0
    assert result["hd95_pooled_images"] == 0


def test_empty_prediction() -> None:
    result = segmentation_metrics(np.zeros_like(TARGET)[None], TARGET[None])
    mean = result["mean"]
    assert mean["dice"] == 0.0 and mean["jaccard"] == 0.0
    assert mean["precision"] == 0.0 and mean["recall"] == 0.0
    assert mean["accuracy"] == pytest.approx((1024 - 400) / 1024)
    assert math.isnan(mean["hd95"])
    assert result["hd95_undefined"] == 1


def test_empty_target() -> None:
    result = segmentation_metrics(TARGET[None], np.zeros_like(TARGET)[None])
    mean = result["mean"]
    assert mean["dice"] == 0.0 and mean["precision"] == 0.0 and mean["recall"] == 0.0
    assert math.isnan(mean["hd95"])
    assert result["hd95_undefined"] == 1
    assert math.isnan(per_image_metrics(TARGET[None], np.zeros_like(TARGET)[None])[0]["hd95"])


def test_pooled_and_mean_differ() -> None:
    # image 0: 400-pixel target predicted perfectly (Dice 1); image 1: 4-pixel target missed (Dice 0).
    small = np.zeros((32, 32), dtype=np.int64)
    small[0:2, 0:2] = 1
    pred = np.stack([TARGET, np.zeros_like(small)])
    target = np.stack([TARGET, small])
    result = segmentation_metrics(pred, target)
    assert result["mean"]["dice"] == pytest.approx(0.5)
    assert result["pooled"]["dice"] == pytest.approx(2 * 400 / (2 * 400 + 4))  # TP 400, FN 4
    assert result["mean"]["recall"] == pytest.approx(0.5)
    assert result["pooled"]["recall"] == pytest.approx(400 / 404)
    assert result["pooled"]["precision"] == pytest.approx(1.0)
    assert result["hd95_undefined"] == 1


def test_hd95_mean_counts_both_empty_images_but_pooled_does_not() -> None:
    empty = np.zeros_like(TARGET)
    result = segmentation_metrics(np.stack([SHIFTED, empty]), np.stack([TARGET, empty]))
    assert result["mean"]["hd95"] == pytest.approx(1.5)  # (3 + 0) / 2
    assert result["pooled"]["hd95"] == pytest.approx(3.0)  # only the image with both masks non-empty
    assert result["hd95_pooled_images"] == 1


def test_list_of_different_sizes_and_input_layouts() -> None:
    big_target = square(10, 10, size=30, shape=(64, 48))
    big_pred = square(10, 10, size=30, shape=(64, 48))
    result = segmentation_metrics([SHIFTED, big_pred[None]], [TARGET, torch.as_tensor(big_target)])
    assert result["mean"]["dice"] == pytest.approx((0.85 + 1.0) / 2)
    assert result["pooled"]["dice"] == pytest.approx(2 * (340 + 900) / (2 * (340 + 900) + 120))

    records = per_image_metrics([SHIFTED, big_pred], [TARGET, big_target], names=["a", "b"])
    assert [(r["name"], r["height"], r["width"]) for r in records] == [("a", 32, 32), ("b", 64, 48)]

    four_d = segmentation_metrics(SHIFTED[None, None], TARGET[None, None])
    assert four_d["mean"] == pytest.approx(SHIFTED_EXPECTED)
    float_masks = segmentation_metrics(SHIFTED[None].astype(np.float32), TARGET[None].astype(bool))
    assert float_masks["mean"] == pytest.approx(SHIFTED_EXPECTED)


@pytest.mark.parametrize("device", DEVICES)
def test_accepts_tensors_on_any_device(device: str) -> None:
    pred = torch.as_tensor(SHIFTED, device=device)[None]
    target = torch.as_tensor(TARGET, device=device)[None]
    assert segmentation_metrics(pred, target)["mean"] == pytest.approx(SHIFTED_EXPECTED)


def test_multiclass_per_class_and_mean() -> None:
    target = np.zeros((32, 32), dtype=np.int64)
    target[2:10, 2:10] = 1
    target[20:28, 20:28] = 2
    pred = target.copy()
    pred[20:28, 20:28] = 0  # class 2 missed entirely
    result = segmentation_metrics(pred[None], target[None], num_classes=3)
    assert result["per_class"]["1"]["mean"]["dice"] == 1.0
    assert result["per_class"]["2"]["mean"]["dice"] == 0.0
    assert result["mean"]["dice"] == pytest.approx(0.5)
    assert result["mean"]["hd95"] == 0.0  # class 2's NaN is left out
    assert result["hd95_undefined"] == 1
    assert result["per_class"]["2"]["hd95_undefined"] == 1

    record = per_image_metrics(pred[None], target[None], num_classes=3)[0]
    assert record["dice_class1"] == 1.0 and record["dice_class2"] == 0.0
    assert record["dice"] == pytest.approx(0.5)
    assert record["fn"] == 64


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"class indices in \[0, 1\]"):
        segmentation_metrics(TARGET[None] * 255, TARGET[None])
    with pytest.raises(ValueError, match="shape"):
        segmentation_metrics([TARGET], [TARGET[:30]])
    with pytest.raises(ValueError, match="integer class indices"):
        segmentation_metrics(TARGET[None] * 0.7, TARGET[None])
    with pytest.raises(ValueError, match="2 predictions but 1 targets"):
        segmentation_metrics(np.stack([TARGET, TARGET]), TARGET[None])
    with pytest.raises(ValueError, match="num_classes"):
        segmentation_metrics(TARGET[None], TARGET[None], num_classes=1)
    with pytest.raises(ValueError, match="per-image spacing"):
        segmentation_metrics([TARGET, TARGET], [TARGET, TARGET], spacing=[(1.0, 1.0), (1.0, 1.0), (1.0, 1.0)])
    with pytest.raises(ValueError, match="each spacing"):
        segmentation_metrics([TARGET, TARGET], [TARGET, TARGET], spacing=[(1.0, 1.0), None])
    with pytest.raises(ValueError, match="names"):
        per_image_metrics([TARGET], [TARGET], names=["a", "b"])


def test_format_metrics_table() -> None:
    shifted = segmentation_metrics(SHIFTED[None], TARGET[None])
    missed = segmentation_metrics(np.zeros_like(TARGET)[None], TARGET[None])
    table = format_metrics_table({"stage 2": shifted, "a|b": missed})
    lines = table.strip().splitlines()
    assert lines[0] == (
        "| method | aggregation | accuracy (%) | precision (%) | recall (%) | Jaccard (%) | Dice (%) | HD95 (px) |"
    )
    assert lines[1] == "|---|---|---:|---:|---:|---:|---:|---:|"
    assert lines[2] == "| stage 2 | per-image mean | 88.28 | 85.00 | 85.00 | 73.91 | 85.00 | 3.00 |"
    assert lines[3].startswith("| stage 2 | pooled | 88.28 |")
    assert lines[4].startswith("| a\\|b | per-image mean | 60.94 | 0.00 |")
    assert lines[4].endswith("| n/a |")
    assert len(lines) == 6

    single = format_metrics_table(shifted, aggregations=("pooled",), name="SS_CASE_UNet")
    assert single.strip().splitlines()[2].startswith("| SS_CASE_UNet | pooled |")
    with pytest.raises(ValueError, match="aggregation"):
        format_metrics_table(shifted, aggregations=("median",))


def test_format_metrics_table_mixed_units() -> None:
    in_px = segmentation_metrics(SHIFTED[None], TARGET[None])
    in_mm = segmentation_metrics(SHIFTED[None], TARGET[None], spacing=0.5)
    lines = format_metrics_table({"px": in_px, "mm": in_mm}, aggregations=("mean",)).splitlines()
    assert lines[0].endswith("| HD95 |")
    assert lines[2].endswith("| 3.00 px |")
    assert lines[3].endswith("| 1.50 mm |")


def test_format_per_class_table() -> None:
    target = np.zeros((32, 32), dtype=np.int64)
    target[5:25, 5:25] = 1
    target[0:4, 0:4] = 2
    pred = np.where(target == 1, 0, target)
    pred[5:25, 8:28] = 1  # class 1 shifted 3 columns (the SHIFTED case); class 2 missed
    pred[0:4, 0:4] = 0
    result = segmentation_metrics(pred[None], target[None], num_classes=3)
    # rows by label value, whatever the order of the names
    lines = format_per_class_table({"SS_CASE_UNet": result}, {"fetal_head": 2, "pubic_symphysis": 1}).splitlines()
    assert lines[0].startswith("| method | class | Dice mean (%) | Dice pooled (%) |")
    assert lines[0].endswith("| HD95 mean (px) | HD95 undefined |")
    assert lines[2] == "| SS_CASE_UNet | pubic_symphysis (1) | 85.00 | 85.00 | 73.91 | 85.00 | 85.00 | 3.00 | 0 |"
    assert lines[3] == "| SS_CASE_UNet | fetal_head (2) | 0.00 | 0.00 | 0.00 | 0.00 | 0.00 | n/a | 1 |"
    assert len(lines) == 4
    with pytest.raises(ValueError, match=r"no class 3 \(other\)"):
        format_per_class_table({"m": result}, {"other": 3})
    with pytest.raises(ValueError, match="no results"):
        format_per_class_table({}, {"a": 1})


def test_dice_per_image_binary_and_multiclass():
    labels = torch.zeros(3, 1, 4, 4, dtype=torch.long)
    labels[1, 0, :2] = 1
    predicted = torch.zeros(3, 1, 4, 4, dtype=torch.long)
    predicted[1, 0, :1] = 1  # 4 of the 8 label pixels
    predicted[2, 0, 0, 0] = 1  # a false positive on an empty label
    assert dice_per_image(predicted, labels).tolist() == pytest.approx([1.0, 2 * 4 / 12, 0.0])
    assert dice_per_image(predicted[:, 0], labels[:, 0]).tolist() == pytest.approx([1.0, 2 * 4 / 12, 0.0])
    multi_labels = torch.tensor([[[[1, 2], [0, 0]]]])
    multi_predicted = torch.tensor([[[[1, 1], [0, 0]]]])
    assert dice_per_image(multi_predicted, multi_labels, num_classes=3).tolist() == pytest.approx([(2 / 3 + 0.0) / 2])
    with pytest.raises(ValueError, match="shape"):
        dice_per_image(predicted, labels[:2])
