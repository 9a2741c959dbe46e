"""Pictures of an evaluation: overlays of the best and worst cases, the Dice histogram, learning curves, an index.

``sscase-monai evaluate --report DIR`` writes, into ``DIR``:

- ``best_<k>_<name>.png`` / ``worst_<k>_<name>.png``: image, ground truth and prediction side by side, filled and
  outlined (the ground truth's outline repeated dashed yellow on the prediction), Dice and HD95 in the title;
- ``dice_histogram.png``: the per-image Dice distribution with its mean and median;
- ``learning_curve_<stage>.png``: per training stage, train and validation loss, validation Dice and learning rate
  against epoch, from the trainer's ``history.csv`` (columns ``stage, epoch, train_loss, val_loss, val_dice, lr``);
- ``index.md`` and ``index.html``: the metrics table and every picture.

Figures are drawn off-screen on matplotlib's Agg canvas, without pyplot: nothing here opens a window or changes the
caller's matplotlib backend.
"""

from __future__ import annotations

import csv
import html
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from sscase_monai import io
from sscase_monai.evaluation import CaseResult, EvaluationResult
from sscase_monai.paths import existing_file
from sscase_monai.training.run_log import HISTORY_FILE

logger = logging.getLogger(__name__)

PLOTTED_COLUMNS: tuple[str, ...] = ("train_loss", "val_loss", "val_dice", "lr")
"""Columns of ``history.csv`` that are plotted (any that are present)."""

CLASS_COLORS: tuple[str, ...] = ("#2ca02c", "#d62728", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")
"""Colour of foreground class 1, 2, ... in overlays (ground truth and prediction alike)."""

GROUND_TRUTH_OUTLINE = "yellow"
"""Colour of the ground truth's dashed outline drawn over the prediction."""

_DPI = 100


def _display_image(image: np.ndarray) -> np.ndarray:
    """Any read image -> ``(H, W)`` gray or ``(H, W, 3)`` RGB float in [0, 1] for ``imshow``."""
    array = np.asarray(image, dtype=np.float64)
    if array.ndim == 3:
        array = array[..., :3] if array.shape[-1] >= 3 else array[..., 0]
    low, high = np.percentile(array, (0.5, 99.5)) if array.size else (0.0, 1.0)
    if high <= low:
        high = low + 1.0
    return np.clip((array - low) / (high - low), 0.0, 1.0)


def _draw_mask(
    axis: Axes,
    mask: np.ndarray,
    num_classes: int,
    linestyle: str = "solid",
    fill: bool = True,
    color: str | None = None,
) -> None:
    """Fill (translucent) and outline each foreground class in its colour, or all in ``color``."""
    for value in range(1, num_classes):
        region = mask == value
        if not region.any():
            continue
        color_of_class = color or CLASS_COLORS[(value - 1) % len(CLASS_COLORS)]
        if fill:
            axis.imshow(
                np.ma.masked_where(~region, region),
                cmap=ListedColormap([color_of_class]),
                alpha=0.3,
                interpolation="nearest",
                vmin=0,
                vmax=1,
            )
        axis.contour(
            region.astype(np.float32), levels=[0.5], colors=[color_of_class], linewidths=1.2, linestyles=linestyle
        )


def _metric_text(value: float, unit: str = "") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}{unit}"


def save_overlay(
    image: np.ndarray,
    label_mask: np.ndarray,
    prediction_mask: np.ndarray,
    path: str | os.PathLike,
    title: str = "",
    num_classes: int = 2,
) -> Path:
    """Image | ground truth | prediction, side by side, as a PNG.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` image (any dtype; contrast stretched for display).
        label_mask: ``(H, W)`` ground-truth class indices.
        prediction_mask: ``(H, W)`` predicted class indices.
        path: the PNG to write.
        title: the figure title (e.g. name, Dice, HD95).
        num_classes: classes including background.

    Returns:
        ``path``.
    """
    shown = _display_image(image)
    height, width = shown.shape[:2]
    panel_width = 4.0
    panel_height = max(2.0, min(8.0, panel_width * height / max(width, 1)))
    figure = _figure(3 * panel_width, panel_height + 0.7)
    axes = figure.subplots(1, 3)
    for axis, heading in zip(
        axes, ("image", "ground truth", f"prediction (dashed {GROUND_TRUTH_OUTLINE}: ground truth)"), strict=True
    ):
        axis.imshow(shown, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axis.set_title(heading, fontsize=9)
        axis.set_axis_off()
    _draw_mask(axes[1], label_mask, num_classes)
    _draw_mask(axes[2], prediction_mask, num_classes)
    _draw_mask(axes[2], label_mask, num_classes, linestyle="dashed", fill=False, color=GROUND_TRUTH_OUTLINE)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return _save(figure, path)


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def save_case_overlay(case: CaseResult, path: str | os.PathLike, num_classes: int = 2) -> Path:
    """:func:`save_overlay` of one evaluated case, its Dice and HD95 in the title."""
    image, _ = io.read_image(case.image)
    record = case.record
    title = (
        f"{case.kind} {case.rank}: {case.name}   Dice {_metric_text(100 * record['dice'], '%')}   "
        f"HD95 {_metric_text(record['hd95'], ' ' + str(record['hd95_unit']))}"
    )
    return save_overlay(image, case.label_mask, case.prediction_mask, path, title, num_classes)


def save_dice_histogram(dice: Sequence[float], path: str | os.PathLike, title: str = "Dice per image") -> Path:
    """Histogram of per-image Dice (as %, 0-100) with the mean and median marked."""
    values = 100.0 * np.asarray([d for d in dice if not math.isnan(d)], dtype=np.float64)
    figure = _figure(6, 4)
    axis = figure.subplots()
    axis.hist(values, bins=np.linspace(0, 100, 21), color="#1f77b4", edgecolor="white")
    if values.size:
        axis.axvline(values.mean(), color="#d62728", label=f"mean {values.mean():.1f}%")
        axis.axvline(np.median(values), color="#ff7f0e", linestyle="--", label=f"median {np.median(values):.1f}%")
        axis.legend(loc="upper left")
    axis.set_xlim(0, 100)
    axis.set_xlabel("Dice (%)")
    axis.set_ylabel("images")
    axis.set_title(f"{title} (n = {values.size})")
    figure.tight_layout()
    return _save(figure, path)


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else float("nan")
    except ValueError:
        return float("nan")


def read_history(path: str | os.PathLike) -> dict[str, dict[str, list[float]]]:
    """A trainer's ``history.csv`` grouped by stage: ``{stage: {"epoch": [...], "train_loss": [...], ...}}``.

    Empty or non-numeric cells become NaN; a file without ``stage`` is one stage named ``"training"``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: no ``epoch`` column (the message names the file).
    """
    path = existing_file(path, "training history")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "epoch" not in columns:
            raise ValueError(f"{path}: a training history needs an 'epoch' column, found columns {columns}")
        stages: dict[str, dict[str, list[float]]] = {}
        for row in reader:
            row = {(k or "").strip(): v for k, v in row.items()}
            stage = (row.get("stage") or "training").strip() or "training"
            series = stages.setdefault(stage, {c: [] for c in ("epoch", *PLOTTED_COLUMNS)})
            for column in series:
                series[column].append(_number(row.get(column)))
    return stages


def _stage_file_name(stage: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", stage).strip("_") or "stage"
    return f"learning_curve_{safe}.png"


def save_learning_curve(stage: str, series: Mapping[str, Sequence[float]], path: str | os.PathLike) -> Path:
    """One stage's curves: losses, validation Dice and learning rate against epoch (absent columns are left out)."""
    epochs = np.asarray(series["epoch"], dtype=np.float64)

    def present(column: str) -> bool:
        return column in series and bool(np.isfinite(np.asarray(series[column], dtype=np.float64)).any())

    figure = _figure(14, 4)
    axes = figure.subplots(1, 3)
    loss_axis, dice_axis, lr_axis = axes
    for column, style in (("train_loss", "-o"), ("val_loss", "-s")):
        if present(column):
            loss_axis.plot(epochs, series[column], style, markersize=3, label=column.replace("_", " "))
    if present("val_loss"):
        best = int(np.nanargmin(np.asarray(series["val_loss"], dtype=np.float64)))
        loss_axis.axvline(epochs[best], color="gray", linestyle=":", label=f"best val loss (epoch {epochs[best]:g})")
    loss_axis.set_title("loss")
    if loss_axis.lines:
        loss_axis.legend(fontsize=8)
    if present("val_dice"):
        dice = np.asarray(series["val_dice"], dtype=np.float64)
        scale = 1.0 if np.nanmax(dice) > 1.0 else 100.0  # fractions (the trainer's) or already percent
        dice_axis.plot(epochs, scale * dice, "-o", markersize=3, color="#2ca02c")
    dice_axis.set_title("validation Dice (%)")
    if present("lr"):
        lr_axis.semilogy(epochs, series["lr"], "-", color="#9467bd", drawstyle="steps-post")
    lr_axis.set_title("learning rate")
    for axis in axes:
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    figure.suptitle(f"training stage {stage}")
    figure.tight_layout()
    return _save(figure, path)


def save_learning_curves(history_csv: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """One learning-curve PNG per stage of a ``history.csv``, in the stages' order of appearance."""
    return [
        save_learning_curve(stage, series, Path(out_dir) / _stage_file_name(stage))
        for stage, series in read_history(history_csv).items()
    ]


def find_history(model_path: str | os.PathLike | None) -> Path | None:
    """The ``history.csv`` beside a model file, if there is one."""
    if model_path is None:
        return None
    candidate = Path(model_path).parent / HISTORY_FILE
    return candidate if candidate.is_file() else None


def write_report(
    result: EvaluationResult,
    out_dir: str | os.PathLike,
    table: str | None = None,
    model_path: str | os.PathLike | None = None,
    history_csv: str | os.PathLike | None = None,
    details: Mapping[str, str] | None = None,
) -> Path:
    """Write every picture of an evaluation and ``index.md`` / ``index.html`` listing them.

    Args:
        result: from :func:`sscase_monai.evaluation.evaluate_model` (with ``keep_cases`` for the overlays).
        out_dir: the report folder (created).
        table: the metrics table to show (default: ``result.table()``).
        model_path: the model evaluated; its folder's ``history.csv`` gives the learning curves.
        history_csv: a training history to plot instead of the one beside the model.
        details: more ``{label: text}`` lines for the report's header (images, labels, TTA, ...).

    Returns:
        The ``index.md`` path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = table or result.table()
    overlays = [
        (case, save_case_overlay(case, out_dir / f"{case.kind}_{case.rank}_{case.name}.png", result.num_classes))
        for case in result.cases
    ]
    histogram = save_dice_histogram(result.dice, out_dir / "dice_histogram.png")
    history = Path(history_csv) if history_csv else find_history(model_path)
    curves: list[tuple[str, Path]] = []
    if history is not None:
        try:
            stages = read_history(history)
        except ValueError as e:
            logger.warning("no learning curves: %s", e)
            stages = {}
        curves = [
            (f"stage {stage}", save_learning_curve(stage, series, out_dir / _stage_file_name(stage)))
            for stage, series in stages.items()
        ]
    header = {"model": str(model_path)} if model_path else {}
    header |= dict(details or {})
    if history is not None:
        header["training history"] = str(history)
    sections = _sections(result, overlays, histogram, curves, history)
    (out_dir / "index.html").write_text(_html(header, table, result.hd95_note(), sections), encoding="utf-8")
    index = out_dir / "index.md"
    index.write_text(_markdown(header, table, result.hd95_note(), sections), encoding="utf-8")
    logger.info("wrote the evaluation report %s", index)
    return index


Section = tuple[str, list[tuple[str, str]]]
"""A report section: its heading and ``(caption, picture file name)`` items."""


def _sections(
    result: EvaluationResult,
    overlays: list[tuple[CaseResult, Path]],
    histogram: Path,
    curves: list[tuple[str, Path]],
    history: Path | None,
) -> list[Section]:
    def caption(case: CaseResult) -> str:
        r = case.record
        return (
            f"{case.kind} {case.rank}: {case.name} (Dice {_metric_text(100 * r['dice'], '%')}, "
            f"HD95 {_metric_text(r['hd95'], ' ' + str(r['hd95_unit']))})"
        )

    sections: list[Section] = [("Dice distribution", [(f"Dice of {len(result.records)} images", histogram.name)])]
    for kind in ("best", "worst"):
        items = [(caption(case), path.name) for case, path in overlays if case.kind == kind]
        if items:
            sections.append((f"{kind.capitalize()} cases by Dice", items))
    if curves:
        sections.append(("Learning curves", [(caption, path.name) for caption, path in curves]))
    elif history is None:
        sections.append(("Learning curves", [("no history.csv beside the model file", "")]))
    return sections


def _markdown(header: Mapping[str, str], table: str, note: str, sections: list[Section]) -> str:
    lines = ["# Evaluation report", ""]
    lines += [f"- {key}: `{value}`" for key, value in header.items()]
    lines += ["", table.rstrip(), "", note, ""]
    for heading, items in sections:
        lines += [f"## {heading}", ""]
        for caption, name in items:
            lines += [f"**{caption}**", "", f"![{caption}]({name})", ""] if name else [caption, ""]
    return "\n".join(lines)


def _table_html(table: str) -> str:
    rows = [line.strip().strip("|").split(" | ") for line in table.strip().splitlines()]
    rows = [row for row in rows if not all(set(cell.strip()) <= set("-:") for cell in row)]
    head, *body = rows
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in row) + "</tr>" for row in body]
    return "\n".join([*out, "</table>"])


def _html(header: Mapping[str, str], table: str, note: str, sections: list[Section]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"><title>Evaluation report</title>',
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style>",
        "</head><body>",
        "<h1>Evaluation report</h1>",
        "<ul>"
        + "".join(f"<li>{html.escape(k)}: <code>{html.escape(v)}</code></li>" for k, v in header.items())
        + "</ul>",
        _table_html(table),
        f"<p>{html.escape(note)}</p>",
    ]
    for heading, items in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for caption, name in items:
            if name:
                parts.append(
                    f'<figure><img src="{html.escape(name)}" alt="{html.escape(caption)}">'
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                )
            else:
                parts.append(f"<p>{html.escape(caption)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
