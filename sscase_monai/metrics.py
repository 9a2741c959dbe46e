"""Segmentation metrics as the paper reports them: accuracy, precision, recall, Jaccard, Dice, plus HD95.

Every metric is computed two ways, because the paper's notebook and a per-image evaluation disagree:

- ``"mean"``: computed on each image, then averaged over images (each image counts equally);
- ``"pooled"``: true/false positives/negatives summed over all pixels of all images, then one ratio (the notebook's
  way: it scores a whole batch at once, so large masks weigh more).

Predictions and targets are integer class masks (0 = background), already thresholded (the method binarises
probabilities at 0.5) and at each image's own size. Metrics are one-vs-rest per foreground class ``1..K``; the
headline numbers are the mean over foreground classes (for binary, class 1 alone).

Edge cases (per image and class, and the same rule for pooled sums):

- A ratio whose denominator is 0 (empty prediction for precision, empty target for recall, both empty for Jaccard and
  Dice) scores 1 when prediction and target are both empty (a correct "nothing here"), else 0.
- HD95: 0 when both masks are empty; NaN when exactly one is empty (no distance exists). NaNs are left out of the
  averages and counted (``hd95_undefined``), so read HD95 together with that count (and with Dice, which is 0 there).
- ``mean`` HD95 averages every image where HD95 is defined (both-empty images count as 0); ``pooled`` HD95, for which
  no pixel pooling exists, is the mean over images whose prediction and target are both non-empty.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, get_confusion_matrix
from monai.networks.utils import one_hot

logger = logging.getLogger(__name__)

METRIC_NAMES: tuple[str, ...] = ("accuracy", "precision", "recall", "jaccard", "dice", "hd95")
"""Keys of every metrics dict, in the paper's column order (HD95 added)."""

AGGREGATIONS: tuple[str, ...] = ("mean", "pooled")
"""The two ways of averaging over images: per-image mean, and counts pooled over all pixels."""

MaskLike = np.ndarray | torch.Tensor
MasksLike = MaskLike | Sequence[MaskLike]
SpacingLike = float | Sequence[float] | Sequence[Sequence[float]] | None


@dataclass(frozen=True)
class _ClassCounts:
    """One image, one class: the confusion counts and the HD95."""

    tp: int
    fp: int
    fn: int
    tn: int
    hd95: float

    @property
    def both_nonempty(self) -> bool:
        return self.tp + self.fp > 0 and self.tp + self.fn > 0


def _ratio(numerator: int, denominator: int, both_empty: bool) -> float:
    if denominator > 0:
        return numerator / denominator
    return 1.0 if both_empty else 0.0


def _ratios(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """Accuracy, precision, recall, Jaccard, Dice from counts, with this module's 0/0 rule."""
    both_empty = tp + fp + fn == 0
    return {
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn, both_empty),
        "precision": _ratio(tp, tp + fp, both_empty),
        "recall": _ratio(tp, tp + fn, both_empty),
        "jaccard": _ratio(tp, tp + fp + fn, both_empty),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
    }


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else float("nan")


def _as_int_tensor(mask: MaskLike, label: str) -> torch.Tensor:
    """A CPU int64 tensor of class indices; refuses fractional values (unthresholded probabilities)."""
    if isinstance(mask, torch.Tensor):
        tensor = mask.detach().cpu()
    else:
        array = np.asarray(mask)
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{label} must be a numeric mask, got dtype {array.dtype}")
        tensor = torch.from_numpy(array.astype(np.float64 if array.dtype.kind == "f" else np.int64))
    if tensor.is_floating_point() and not torch.equal(tensor, tensor.round()):
        raise ValueError(f"{label} must hold integer class indices (threshold probabilities first), got fractions")
    return tensor.to(torch.int64)


def _to_mask_list(masks: MasksLike, name: str) -> list[torch.Tensor]:
    """``(N, H, W)``, ``(N, 1, H, W)``, one ``(H, W)`` mask, or a sequence of ``(H, W)``/``(1, H, W)`` masks."""
    if isinstance(masks, np.ndarray | torch.Tensor):
        tensor = _as_int_tensor(masks, name)
        if tensor.ndim == 2:
            return [tensor]
        if tensor.ndim == 3:
            return list(tensor)
        if tensor.ndim == 4 and tensor.shape[1] == 1:
            return list(tensor[:, 0])
        raise ValueError(f"{name} must be (N, H, W) or (N, 1, H, W) masks, got shape {tuple(tensor.shape)}")
    items = []
    for i, mask in enumerate(masks):
        tensor = _as_int_tensor(mask, f"{name}[{i}]")
        if tensor.ndim == 3 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tensor.ndim != 2:
            raise ValueError(f"{name}[{i}] must be an (H, W) or (1, H, W) mask, got shape {tuple(tensor.shape)}")
        items.append(tensor)
    return items


def _spacing_list(spacing: SpacingLike, count: int) -> list[tuple[float, float] | None]:
    """One ``(row, col)`` spacing (or ``None`` for pixels) per image."""
    if spacing is None:
        return [None] * count
    if isinstance(spacing, numbers.Real):
        return [(float(spacing), float(spacing))] * count
    items = list(spacing)
    if all(isinstance(s, numbers.Real) for s in items):
        if len(items) != 2:
            raise ValueError(f"a shared spacing must be (row, col), got {spacing!r}")
        return [(float(items[0]), float(items[1]))] * count
    if len(items) != count:
        raise ValueError(f"per-image spacing needs {count} entries, got {len(items)}")
    per_image: list[tuple[float, float] | None] = []
    for s in items:
        if isinstance(s, numbers.Real):
            per_image.append((float(s), float(s)))
        elif s is not None and len(s) == 2:
            per_image.append((float(s[0]), float(s[1])))
        else:
            raise ValueError(f"each spacing must be a number or (row, col), got {s!r}")
    return per_image


def _image_counts(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, spacing: tuple[float, float] | None, index: int
) -> list[_ClassCounts]:
    """Counts and HD95 of foreground classes ``1..num_classes-1`` for one image."""
    if pred.shape != target.shape:
        raise ValueError(f"image {index}: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    for name, mask in (("prediction", pred), ("target", target)):
        if mask.numel() and (int(mask.min()) < 0 or int(mask.max()) >= num_classes):
            raise ValueError(
                f"image {index}: {name} values must be class indices in [0, {num_classes - 1}], "
                f"got range [{int(mask.min())}, {int(mask.max())}]"
            )
    pred_onehot = one_hot(pred[None, None], num_classes)
    target_onehot = one_hot(target[None, None], num_classes)
    confusion = get_confusion_matrix(pred_onehot, target_onehot, include_background=True)[0]  # (classes, [tp,fp,tn,fn])
    counts = []
    for c in range(1, num_classes):
        tp, fp, tn, fn = (int(v) for v in confusion[c].tolist())
        if tp + fp + fn == 0:
            hd95 = 0.0
        elif tp + fp == 0 or tp + fn == 0:
            hd95 = float("nan")
        else:
            hd95 = float(
                compute_hausdorff_distance(
                    pred_onehot[:, c : c + 1],
                    target_onehot[:, c : c + 1],
                    include_background=True,
                    percentile=95,
                    spacing=list(spacing) if spacing is not None else None,
                )[0, 0]
            )
        counts.append(_ClassCounts(tp=tp, fp=fp, fn=fn, tn=tn, hd95=hd95))
    return counts


def _all_counts(
    pred: MasksLike, target: MasksLike, num_classes: int, spacing: SpacingLike
) -> tuple[list[torch.Tensor], list[list[_ClassCounts]]]:
    if num_classes < 2:
        raise ValueError(f"num_classes counts background too and must be >= 2, got {num_classes!r}")
    preds = _to_mask_list(pred, "pred")
    targets = _to_mask_list(target, "target")
    if len(preds) != len(targets):
        raise ValueError(f"got {len(preds)} predictions but {len(targets)} targets")
    if not preds:
        raise ValueError("no images to evaluate")
    spacings = _spacing_list(spacing, len(preds))
    triples = enumerate(zip(preds, targets, spacings, strict=True))
    counts = [_image_counts(p, t, num_classes, s, i) for i, (p, t, s) in triples]
    return targets, counts


def _class_summary(counts: list[_ClassCounts]) -> dict:
    """``mean`` and ``pooled`` metrics of one class over images, and the HD95 bookkeeping."""
    per_image = [_ratios(c.tp, c.fp, c.fn, c.tn) | {"hd95": c.hd95} for c in counts]
    mean = {m: _nanmean([r[m] for r in per_image]) for m in METRIC_NAMES}
    pooled = _ratios(*(sum(getattr(c, k) for c in counts) for k in ("tp", "fp", "fn", "tn")))
    pooled["hd95"] = _nanmean([c.hd95 for c in counts if c.both_nonempty])
    return {
        "mean": mean,
        "pooled": pooled,
        "hd95_undefined": sum(math.isnan(c.hd95) for c in counts),
        "hd95_pooled_images": sum(c.both_nonempty for c in counts),
    }


def segmentation_metrics(pred: MasksLike, target: MasksLike, num_classes: int = 2, spacing: SpacingLike = None) -> dict:
    """Accuracy, precision, recall, Jaccard, Dice and HD95 over a set of images, per-image mean and pooled.

    Args:
        pred: predicted class masks: ``(N, H, W)`` or ``(N, 1, H, W)`` array/tensor, or a sequence of ``(H, W)`` or
            ``(1, H, W)`` masks of different sizes (each image at its own size).
        target: ground-truth class masks, matching ``pred`` image by image.
        num_classes: number of classes including background (2 for binary).
        spacing: for HD95 in mm: one number (isotropic), one ``(row, col)`` pair for all images (the order of
            ``ImageGeometry.pixel_spacing_hw``), or a sequence with one number/pair per image.
            ``None``: HD95 in pixels.

    Returns:
        ``{"num_images", "num_classes", "hd95_unit", "mean": {metric: value}, "pooled": {metric: value},
        "hd95_undefined", "hd95_pooled_images", "per_class": {"1": {...same keys...}, ...}}``. Ratios are fractions
        in [0, 1]; ``mean``/``pooled`` at the top are the average over foreground classes. ``hd95_undefined`` counts
        (image, class) pairs with exactly one empty mask (HD95 NaN, left out); ``hd95_pooled_images`` counts those
        with both masks non-empty (the ones pooled HD95 averages). See the module docstring for edge cases.

    Raises:
        ValueError: shapes or counts do not match, or a mask holds values outside ``[0, num_classes - 1]``.
    """
    _, counts = _all_counts(pred, target, num_classes, spacing)
    per_class = {str(c): _class_summary([image[c - 1] for image in counts]) for c in range(1, num_classes)}
    return {
        "num_images": len(counts),
        "num_classes": num_classes,
        "hd95_unit": "px" if spacing is None else "mm",
        "mean": {m: _nanmean([s["mean"][m] for s in per_class.values()]) for m in METRIC_NAMES},
        "pooled": {m: _nanmean([s["pooled"][m] for s in per_class.values()]) for m in METRIC_NAMES},
        "hd95_undefined": sum(s["hd95_undefined"] for s in per_class.values()),
        "hd95_pooled_images": sum(s["hd95_pooled_images"] for s in per_class.values()),
        "per_class": per_class,
    }


def per_image_metrics(
    pred: MasksLike,
    target: MasksLike,
    num_classes: int = 2,
    spacing: SpacingLike = None,
    names: Sequence[str] | None = None,
) -> list[dict]:
    """One record per image (rows for a CSV), same edge-case rules as :func:`segmentation_metrics`.

    Args:
        pred: predicted class masks (see :func:`segmentation_metrics`).
        target: ground-truth class masks.
        num_classes: number of classes including background.
        spacing: pixel spacing for HD95 in mm (see :func:`segmentation_metrics`), or ``None`` for pixels.
        names: optional image names (e.g. file stems), one per image.

    Returns:
        Per image: ``index``, ``name`` (when given), ``height``, ``width``, the metrics averaged over foreground
        classes (``accuracy`` ... ``hd95``, NaN HD95 when exactly one mask is empty), and the counts ``tp``, ``fp``,
        ``fn``, ``tn`` summed over foreground classes. Multi-class records add ``<metric>_class<c>`` per class.

    Raises:
        ValueError: as :func:`segmentation_metrics`, or ``names`` has the wrong length.
    """
    targets, counts = _all_counts(pred, target, num_classes, spacing)
    if names is not None and len(names) != len(counts):
        raise ValueError(f"got {len(names)} names for {len(counts)} images")
    records = []
    for i, (mask, image_counts) in enumerate(zip(targets, counts, strict=True)):
        per_class = [_ratios(c.tp, c.fp, c.fn, c.tn) | {"hd95": c.hd95} for c in image_counts]
        record: dict = {"index": i}
        if names is not None:
            record["name"] = names[i]
        record |= {"height": int(mask.shape[0]), "width": int(mask.shape[1])}
        record |= {m: _nanmean([r[m] for r in per_class]) for m in METRIC_NAMES}
        record |= {k: sum(getattr(c, k) for c in image_counts) for k in ("tp", "fp", "fn", "tn")}
        if num_classes > 2:
            for c, r in enumerate(per_class, start=1):
                record |= {f"{m}_class{c}": r[m] for m in METRIC_NAMES}
        records.append(record)
    return records


def dice_per_image(prediction: torch.Tensor, target: torch.Tensor, num_classes: int = 2) -> torch.Tensor:
    """Hard Dice of each image of a batch, averaged over foreground classes (MONAI ``compute_dice``).

    For the training loop's validation: masks of one size, on any device. Same rule as the rest of this module: a
    class empty in both prediction and target scores 1.

    Args:
        prediction: ``(B, H, W)`` or ``(B, 1, H, W)`` predicted class indices.
        target: ground-truth class indices, same shape.
        num_classes: classes including background (2 for binary).

    Returns:
        ``(B,)`` float32 Dice per image.

    Raises:
        ValueError: the shapes differ or ``num_classes`` < 2.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
    if num_classes < 2:
        raise ValueError(f"num_classes counts background too and must be >= 2, got {num_classes!r}")
    if prediction.ndim == 3:
        prediction, target = prediction[:, None], target[:, None]
    scores = compute_dice(
        one_hot(prediction.long(), num_classes),
        one_hot(target.long(), num_classes),
        include_background=False,
        ignore_empty=False,
    )
    return scores.mean(dim=1).float()


def _is_single_result(results: Mapping) -> bool:
    return all(isinstance(results.get(a), Mapping) and "dice" in results[a] for a in AGGREGATIONS)


def format_metrics_table(
    results: Mapping[str, Mapping] | Mapping,
    aggregations: Sequence[str] = AGGREGATIONS,
    name: str = "model",
    decimals: int = 2,
) -> str:
    """A Markdown table in the paper's layout: one row per method and aggregation.

    Columns: accuracy, precision, recall, Jaccard, Dice in percent, then HD95 (its unit in the header, or in each cell
    when results mix pixels and mm). Undefined values print as ``n/a``.

    Args:
        results: ``{method or stage name: segmentation_metrics(...) result}``, or one such result.
        aggregations: which rows to show per method, from ``("mean", "pooled")``.
        name: the row label when ``results`` is a single result.
        decimals: digits after the point for every number.

    Returns:
        The table as Markdown text (ends with a newline).

    Raises:
        ValueError: an unknown aggregation, or no results.
    """
    for aggregation in aggregations:
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    table = {name: results} if _is_single_result(results) else dict(results)
    if not table:
        raise ValueError("no results to format")
    units = {r.get("hd95_unit", "px") for r in table.values()}
    # One unit goes into the header; mixed units (some results in mm, some in pixels) go into each cell.
    hd95_header = f"HD95 ({next(iter(units))})" if len(units) == 1 else "HD95"
    labels = {"mean": "per-image mean", "pooled": "pooled"}
    headers = ["method", "aggregation", "accuracy (%)", "precision (%)", "recall (%)", "Jaccard (%)", "Dice (%)"]
    lines = [
        "| " + " | ".join([*headers, hd95_header]) + " |",
        "|---|---|" + "---:|" * 6,
    ]

    def number(value: float, scale: float) -> str:
        return "n/a" if value is None or math.isnan(value) else f"{value * scale:.{decimals}f}"

    for method, result in table.items():
        for aggregation in aggregations:
            values = result[aggregation]
            cells = [str(method).replace("|", "\\|"), labels[aggregation]]
            cells += [number(values[m], 100.0) for m in METRIC_NAMES[:-1]]
            hd95 = number(values["hd95"], 1.0)
            if len(units) > 1 and hd95 != "n/a":
                hd95 += f" {result.get('hd95_unit', 'px')}"
            cells.append(hd95)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_per_class_table(
    results: Mapping[str, Mapping],
    labels: Mapping[str, int],
    decimals: int = 2,
) -> str:
    """A Markdown table of every foreground class of multi-class results: one row per method and class.

    Columns: Dice (per-image mean and pooled), Jaccard, precision and recall (per-image mean) in percent, HD95
    (per-image mean, its unit in the header) and the number of images where HD95 is undefined for the class (exactly
    one of prediction and target empty; left out of the mean).

    Args:
        results: ``{method name: segmentation_metrics(...) result}`` (with their ``per_class`` entries).
        labels: class names and their label values, e.g. ``{"pubic_symphysis": 1, "fetal_head": 2}``.
        decimals: digits after the point.

    Returns:
        The table as Markdown text (ends with a newline).

    Raises:
        ValueError: no results, or a label value missing from a result's classes.
    """
    if not results:
        raise ValueError("no results to format")
    units = {r.get("hd95_unit", "px") for r in results.values()}
    hd95_header = f"HD95 mean ({next(iter(units))})" if len(units) == 1 else "HD95 mean"
    lines = [
        f"| method | class | Dice mean (%) | Dice pooled (%) | Jaccard mean (%) | precision mean (%) | recall mean (%) "
        f"| {hd95_header} | HD95 undefined |",
        "|---|---|" + "---:|" * 7,
    ]

    def number(value: float, scale: float) -> str:
        return "n/a" if value is None or math.isnan(value) else f"{value * scale:.{decimals}f}"

    for method, result in results.items():
        for name, value in sorted(labels.items(), key=lambda item: item[1]):
            per_class = result.get("per_class", {})
            if str(value) not in per_class:
                raise ValueError(f"{method}: no class {value} ({name}) in its results (classes {sorted(per_class)})")
            summary = per_class[str(value)]
            mean, pooled = summary["mean"], summary["pooled"]
            hd95 = number(mean["hd95"], 1.0)
            if len(units) > 1 and hd95 != "n/a":
                hd95 += f" {result.get('hd95_unit', 'px')}"
            cells = [str(method).replace("|", "\\|"), f"{name} ({value})", number(mean["dice"], 100.0)]
            cells += [number(pooled["dice"], 100.0)]
            cells += [number(mean[m], 100.0) for m in ("jaccard", "precision", "recall")]
            cells += [hd95, str(summary["hd95_undefined"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
