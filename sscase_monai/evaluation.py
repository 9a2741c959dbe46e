"""Evaluating a trained model on labelled images, as ``sscase-monai evaluate`` and the benchmarks do.

Every image is predicted, its prediction restored to the image's original size, and compared there with its label
(read with the model's number of classes: ``{0, 1}``, ``{0, 255}`` or ``{0..K}``). Metrics are the paper's accuracy,
precision, recall, Jaccard and Dice plus HD95 (:mod:`sscase_monai.metrics`), per image and aggregated two ways
(per-image mean and pooled counts).

HD95 is in millimetres when every image has a pixel spacing, else in pixels for all images (one unit per evaluation,
so the averages mean something). An image has a spacing when its file carries one (NIfTI, NRRD; DICOM unless ITK
reports its default of 1 x 1), or, for PNG/JPEG, when a pixel-size table names it (HC18's ``pixel_size_and_hc.csv``:
``filename, pixel_size_mm``; see :func:`read_pixel_size_csv` and :func:`find_pixel_size_csv`).

Biometry (:func:`sscase_monai.biometry.biometry_columns`, the columns of ``predict`` too): per label its pixels and
area, for a model with a ``cerebellum`` label each image's TCD, for a head label
(:data:`sscase_monai.biometry.HEAD_LABELS` by default) its HC, in mm (for images with a spacing), each with its
reliability flag and reasons, from the prediction and from the ground truth (``label_`` columns). With a reference
table (HC18's ``pixel_size_and_hc.csv``: ``head_circumference_mm``, :func:`read_reference_csv`) the HC of both is
compared with the reference (:func:`hc_agreement`), with and without the flagged HCs: the ground-truth masks'
difference is the floor of the estimator (ellipse fit on a filled mask vs the annotated ellipse's perimeter).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sscase_monai import biometry, io
from sscase_monai.inference import Predictor
from sscase_monai.metrics import METRIC_NAMES, format_metrics_table, per_image_metrics, segmentation_metrics
from sscase_monai.paths import existing_file
from sscase_monai.transforms import label_to_class_indices

logger = logging.getLogger(__name__)

SPACING_FORMATS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr")
"""Image formats whose files always carry the pixel spacing (DICOM may: see :func:`file_pixel_spacing`)."""

PIXEL_SIZE_CSV_NAMES: tuple[str, ...] = ("pixel_size_and_hc.csv", "pixel_size.csv")
"""Pixel-size tables looked for beside an images folder (the HC18 layout: ``train/images`` + ``train/<csv>``)."""

SAMPLE_METADATA_NAME = "metadata.csv"
"""The sample-data folder's table (``file``, ``pixel_spacing_mm``), looked for inside an images folder."""

NAME_COLUMNS: tuple[str, ...] = ("filename", "file", "name", "image")
"""Accepted names of a pixel-size table's file-name column, in order of preference."""

SIZE_COLUMNS: tuple[str, ...] = ("pixel_size_mm", "pixel_spacing_mm", "spacing_mm")
"""Accepted names of a pixel-size table's pixel-size column (isotropic pixels, mm)."""

REFERENCE_HC_COLUMNS: tuple[str, ...] = ("head_circumference_mm", "hc_mm")
"""Accepted names of a reference table's head-circumference column (HC18: ``head_circumference_mm``)."""

Spacing = tuple[float, float]
SpacingLookup = Mapping[str, float | Sequence[float]]
"""Pixel size per image, keyed by file name (``a.png``) or stem (``a``): one number or ``(row_mm, col_mm)``."""


def _read_positive_column(
    path: str | os.PathLike, value_columns: Sequence[str], table: str, quantity: str
) -> dict[str, float]:
    """``{image stem: value}`` from a CSV table with a file-name column and a positive number per image.

    Args:
        path: the CSV file.
        value_columns: accepted names of the value column, first match wins.
        table: what the table is, for messages (``"pixel-size table"``).
        quantity: what the value is, for messages (``"pixel size"``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the columns are missing, or a value is not a positive number (the message names file and row).
    """
    path = existing_file(path, table)
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        name_column = next((c for c in NAME_COLUMNS if c in header), None)
        value_column = next((c for c in value_columns if c in header), None)
        if name_column is None or value_column is None:
            raise ValueError(
                f"{path}: a {table} needs a file-name column ({' or '.join(NAME_COLUMNS)}) and a {quantity} "
                f"column ({' or '.join(value_columns)}); found columns {header}"
            )
        values: dict[str, float] = {}
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            name, text = row.get(name_column, ""), row.get(value_column, "")
            if not name:
                continue
            try:
                value = float(text)
            except ValueError:
                value = float("nan")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{path}, line {line}: {quantity} of {name} must be a positive number, got {text!r}")
            values[io.image_stem(name)] = value
    logger.debug("read %d values of %s from %s", len(values), quantity, path)
    return values


def read_pixel_size_csv(path: str | os.PathLike) -> dict[str, Spacing]:
    """Read a pixel-size table: one row per image with its file name and isotropic pixel size in mm.

    Columns: a file name (one of :data:`NAME_COLUMNS`, e.g. HC18's ``filename``) and a size (one of
    :data:`SIZE_COLUMNS`, e.g. ``pixel_size_mm``); other columns are ignored.

    Returns:
        ``{image stem: (row_mm, col_mm)}`` (stems, so ``a.png`` in the table also matches ``a.nii.gz``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the columns are missing, or a size is not a positive number (the message names file and row).
    """
    sizes = _read_positive_column(path, SIZE_COLUMNS, "pixel-size table", "pixel size")
    return {stem: (size, size) for stem, size in sizes.items()}


def read_reference_csv(path: str | os.PathLike) -> dict[str, float]:
    """Read reference head circumferences: one row per image with its file name and HC in mm.

    Columns: a file name (one of :data:`NAME_COLUMNS`) and an HC (one of :data:`REFERENCE_HC_COLUMNS`; HC18's
    ``pixel_size_and_hc.csv`` has ``filename`` and ``head_circumference_mm``).

    Returns:
        ``{image stem: hc_mm}``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the columns are missing, or an HC is not a positive number (the message names file and row).
    """
    return _read_positive_column(path, REFERENCE_HC_COLUMNS, "reference table", "head circumference")


HC_ERROR_LIMIT_MM = 5.0
"""An HC further than this from the reference counts as a miss in :func:`hc_agreement` (issue #20's yardstick)."""


def _difference_summary(diffs: Sequence[float]) -> dict[str, Any]:
    errors = np.abs(np.asarray(diffs, np.float64))
    if not len(errors):
        keys = ("n", "mean_abs_diff_mm", "mean_diff_mm", "median_abs_diff_mm", "p90_abs_diff_mm", "max_abs_diff_mm")
        return dict.fromkeys(keys) | {"n": 0, "over_limit": 0}
    return {
        "n": int(len(errors)),
        "mean_abs_diff_mm": float(errors.mean()),
        "mean_diff_mm": float(np.mean(diffs)),
        "median_abs_diff_mm": float(np.median(errors)),
        "p90_abs_diff_mm": float(np.percentile(errors, 90)),
        "max_abs_diff_mm": float(errors.max()),
        "over_limit": int((errors > HC_ERROR_LIMIT_MM).sum()),
    }


def hc_agreement(records: Sequence[Mapping[str, Any]], reference: Mapping[str, float]) -> dict[str, Any]:
    """How far the predicted and the ground-truth masks' HC are from a reference, with and without flagged HCs.

    Args:
        records: rows with ``name``, ``hc_mm`` and ``hc_reliable`` (and ``label_hc_mm``, ``label_hc_reliable``), as
            :func:`evaluate_model` makes them.
        reference: ``{image stem: hc_mm}`` (:func:`read_reference_csv`).

    Returns:
        ``n`` (images with a reference and a predicted HC), ``missing`` (images without a reference entry or an
        HC), ``limit_mm`` (:data:`HC_ERROR_LIMIT_MM`) and per source (``prediction``, ``ground_truth``) and for the
        HCs not flagged unreliable (``prediction_reliable``, ``ground_truth_reliable``): ``n``,
        ``mean_abs_diff_mm``, ``mean_diff_mm`` (measured - reference), ``median_abs_diff_mm``, ``p90_abs_diff_mm``,
        ``max_abs_diff_mm`` and ``over_limit`` (how many differ by more than ``limit_mm``); ``None`` values when no
        image qualifies. ``flagged``: predicted HCs flagged unreliable.
    """
    summary: dict[str, Any] = {}
    for source, prefix in (("prediction", ""), ("ground_truth", "label_")):
        measured = [r for r in records if r.get(f"{prefix}hc_mm") is not None and r["name"] in reference]
        diffs = [float(r[f"{prefix}hc_mm"]) - reference[r["name"]] for r in measured]
        kept = [d for r, d in zip(measured, diffs, strict=True) if r.get(f"{prefix}hc_reliable") is not False]
        summary[source] = _difference_summary(diffs)
        summary[f"{source}_reliable"] = _difference_summary(kept)
    summary["n"] = summary["prediction"]["n"]
    summary["missing"] = len(records) - summary["n"]
    summary["flagged"] = summary["prediction"]["n"] - summary["prediction_reliable"]["n"]
    summary["limit_mm"] = HC_ERROR_LIMIT_MM
    return summary


def format_hc_agreement(summary: Mapping[str, Any]) -> str:
    """One line: the HC mean absolute differences of :func:`hc_agreement`, and without the flagged HCs."""

    def part(source: str, what: str) -> str:
        value = summary[source]["mean_abs_diff_mm"]
        if value is None:
            return f"{what} n/a"
        over = summary[source]["over_limit"]
        return f"{what} {value:.2f} mm ({over} over {summary['limit_mm']:g} mm)"

    text = (
        f"HC vs reference ({summary['n']} image(s)): mean absolute difference "
        f"{part('prediction', 'prediction')}, {part('ground_truth', 'ground-truth masks')}"
    )
    if summary["flagged"]:
        text += (
            f"; {summary['flagged']} prediction(s) flagged unreliable, without them "
            f"{part('prediction_reliable', 'prediction')}"
        )
    if summary["missing"]:
        text += f"; {summary['missing']} image(s) without a reference or a spacing left out"
    return text + "."


def _has_size_columns(path: Path) -> bool:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            header = [h.strip() for h in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError):
        return False
    return any(c in header for c in NAME_COLUMNS) and any(c in header for c in SIZE_COLUMNS)


def find_pixel_size_csv(images: str | os.PathLike) -> Path | None:
    """The pixel-size table that belongs to an images folder (or to a single image's folder), if any.

    Looks, in this order, for :data:`PIXEL_SIZE_CSV_NAMES` in the folder's parent (HC18: ``train/images`` ->
    ``train/pixel_size_and_hc.csv``), then in the folder itself, then for the sample data's ``metadata.csv`` in the
    folder; a candidate counts only if it has a file-name and a pixel-size column.
    """
    images = Path(images)
    folder = images if images.is_dir() else images.parent
    candidates = [folder.parent / name for name in PIXEL_SIZE_CSV_NAMES]
    candidates += [folder / name for name in PIXEL_SIZE_CSV_NAMES]
    candidates.append(folder / SAMPLE_METADATA_NAME)
    for candidate in candidates:
        if candidate.is_file() and _has_size_columns(candidate):
            return candidate
    return None


def file_pixel_spacing(path: str | os.PathLike, geometry: io.ImageGeometry) -> Spacing | None:
    """The pixel spacing ``(row_mm, col_mm)`` an image file carries, or ``None`` when no physical spacing is known.

    PNG and JPEG carry none. NIfTI, NRRD and DICOM carry one, except where the geometry is exactly the default a
    reader reports for a file without any (:data:`sscase_monai.io.UNKNOWN_SPACING_RULE`): 3D Slicer sends a PNG it
    opened as such a NIfTI, and ultrasound DICOM often has no ``PixelSpacing``; reporting those lengths as
    millimetres would report pixels as millimetres.
    """
    extension = io.image_extension(path)
    if extension not in SPACING_FORMATS + (".dcm", ".dicom") or geometry.has_default_placement:
        return None
    if extension in (".dcm", ".dicom") and geometry.pixel_spacing_hw == (1.0, 1.0):
        return None  # ITK's default for a DICOM without PixelSpacing, whatever its origin
    return geometry.pixel_spacing_hw


def _lookup(spacing_lookup: SpacingLookup, path: str | os.PathLike) -> Spacing | None:
    name = Path(path).name
    value = spacing_lookup.get(name, spacing_lookup.get(io.image_stem(path)))
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value), float(value)
    row_mm, col_mm = value
    return float(row_mm), float(col_mm)


def resolve_pixel_spacing(
    path: str | os.PathLike, geometry: io.ImageGeometry, spacing_lookup: SpacingLookup | None = None
) -> tuple[Spacing | None, str]:
    """An image's pixel spacing and where it came from.

    The file's own spacing wins (a differing table entry is logged as a warning); a table entry serves images whose
    format has none.

    Returns:
        ``((row_mm, col_mm) or None, source)`` with source ``"file"``, ``"table"`` or ``"none"``.
    """
    from_file = file_pixel_spacing(path, geometry)
    from_table = _lookup(spacing_lookup, path) if spacing_lookup else None
    if from_file is not None:
        if from_table is not None and not np.allclose(from_file, from_table, rtol=0.01):
            logger.warning(
                "%s: the file's pixel spacing %s differs from the pixel-size table's %s; using the file's",
                path,
                from_file,
                from_table,
            )
        return from_file, "file"
    if from_table is not None:
        return from_table, "table"
    return None, "none"


def read_label(path: str | os.PathLike, num_classes: int) -> np.ndarray:
    """A label file as an ``(H, W)`` uint8 class-index mask (``{0, 255}`` -> ``{0, 1}`` for binary).

    Raises:
        ImageReadError: the file cannot be read as a 2-D image.
        ValueError: values outside ``0..num_classes-1`` (the message names the file).
    """
    array, _ = io.read_image(path)
    return label_to_class_indices(array, num_classes, source=str(path))[0].astype(np.uint8)


@dataclass
class CaseResult:
    """One image kept for the report (a best or a worst case by Dice).

    Attributes:
        kind: ``"best"`` or ``"worst"``.
        rank: 1 for the best (or worst) case, 2 for the next, ...
        record: the image's row of :attr:`EvaluationResult.records`.
        label_mask: ``(H, W)`` uint8 ground-truth class indices.
        prediction_mask: ``(H, W)`` uint8 predicted class indices.
        spacing: ``(row_mm, col_mm)`` or ``None``.
    """

    kind: str
    rank: int
    record: dict[str, Any]
    label_mask: np.ndarray
    prediction_mask: np.ndarray
    spacing: Spacing | None

    @property
    def name(self) -> str:
        return str(self.record["name"])

    @property
    def image(self) -> str:
        return str(self.record["image"])


@dataclass
class EvaluationResult:
    """What :func:`evaluate_model` found.

    Attributes:
        records: one dict per image (CSV rows): ``name``, ``image``, ``label``, ``height``, ``width``,
            ``spacing_row_mm``, ``spacing_col_mm``, ``spacing_source``, the metrics (fractions; ``hd95`` NaN when
            exactly one of prediction and label is empty), ``hd95_unit``, the counts ``tp, fp, fn, tn``, and per-class
            columns for multi-class models.
        metrics: the :func:`sscase_monai.metrics.segmentation_metrics` result over all images.
        num_classes: classes including background.
        hd95_unit: ``"mm"`` or ``"px"``.
        spacing_sources: how many images got their spacing from the ``"file"``, a ``"table"``, or have ``"none"``.
        cases: the kept best and worst cases (only when asked for: ``keep_cases``).
        hc_reference: :func:`hc_agreement` of the records with the reference HCs (only when given).
    """

    records: list[dict[str, Any]]
    metrics: dict[str, Any]
    num_classes: int
    hd95_unit: str
    spacing_sources: dict[str, int]
    cases: list[CaseResult] = field(default_factory=list)
    hc_reference: dict[str, Any] | None = None

    @property
    def dice(self) -> list[float]:
        """Every image's Dice, in record order."""
        return [float(r["dice"]) for r in self.records]

    def table(self, name: str = "model") -> str:
        """The paper-style Markdown table (per-image mean and pooled rows)."""
        return format_metrics_table(self.metrics, name=name)

    def hd95_note(self) -> str:
        """One or two sentences on HD95's unit, where the spacing came from and undefined values."""
        n = len(self.records)
        if self.hd95_unit == "mm":
            sources = [
                f"{count} from the image files" if src == "file" else f"{count} from a pixel-size table"
                for src, count in self.spacing_sources.items()
                if count and src != "none"
            ]
            note = f"HD95 in mm (pixel spacing of {' and '.join(sources)})."
        else:
            missing = [r["name"] for r in self.records if r["spacing_source"] == "none"]
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            note = (
                f"HD95 in pixels: {len(missing)} of {n} image(s) have no pixel spacing ({shown}); give PNG/JPEG "
                "images one with a pixel-size table (--pixel-size-csv)."
            )
        undefined = int(self.metrics.get("hd95_undefined", 0))
        if undefined:
            what = "image(s)" if self.num_classes == 2 else "(image, class) pair(s)"
            note += (
                f" HD95 is undefined for {undefined} {what} (exactly one of prediction and ground truth empty) "
                "and left out of its averages."
            )
        return note

    def write_csv(self, path: str | os.PathLike) -> Path:
        """Write :attr:`records` as CSV (NaN as an empty cell); returns the path."""
        return write_records_csv(self.records, path)


def _format_cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else round(value, 6)
    return "" if value is None else value


def write_records_csv(records: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Rows of dicts to a CSV file, columns in first-seen order, NaN/None as empty cells."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for record in records:
        columns += [k for k in record if k not in columns]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for record in records:
            writer.writerow({k: _format_cell(v) for k, v in record.items()})
    return path


def _record(
    pair: Mapping[str, str],
    pred: np.ndarray,
    label: np.ndarray,
    num_classes: int,
    spacing: Spacing | None,
    source: str,
    unit: str,
) -> dict[str, Any]:
    metrics = per_image_metrics([pred], [label], num_classes, spacing=None if unit == "px" else [spacing])[0]
    record: dict[str, Any] = {
        "name": io.image_stem(pair["image"]),
        "image": str(pair["image"]),
        "label": str(pair["label"]),
        "height": metrics["height"],
        "width": metrics["width"],
        "spacing_row_mm": spacing[0] if spacing else None,
        "spacing_col_mm": spacing[1] if spacing else None,
        "spacing_source": source,
    }
    record |= {m: metrics[m] for m in METRIC_NAMES}
    record["hd95_unit"] = unit
    record |= {k: v for k, v in metrics.items() if k not in record and k != "index"}
    return record


def _select_cases(records: list[dict[str, Any]], keep: int) -> list[tuple[str, int, int]]:
    """``(kind, rank, index)`` of the ``keep`` best and ``keep`` worst images by Dice (no image twice)."""
    if keep <= 0:
        return []
    indices = range(len(records))
    best = sorted(indices, key=lambda i: (-records[i]["dice"], records[i]["name"]))[:keep]
    worst = [i for i in sorted(indices, key=lambda i: (records[i]["dice"], records[i]["name"])) if i not in best]
    return [("best", r, i) for r, i in enumerate(best, 1)] + [("worst", r, i) for r, i in enumerate(worst[:keep], 1)]


def evaluate_model(
    predictor: Predictor,
    pairs: Sequence[Mapping[str, str]],
    tta: bool | None = False,
    spacing_lookup: SpacingLookup | None = None,
    batch_size: int = 8,
    keep_cases: int = 0,
    head_labels: str | Sequence[str] | None = biometry.HEAD_LABELS,
    reference_hc: Mapping[str, float] | None = None,
) -> EvaluationResult:
    """Predict every labelled image and score it on its original grid.

    Args:
        predictor: the model (its ``spec.num_classes`` decides how labels are read).
        pairs: ``{"image": path, "label": path}`` items, as :func:`sscase_monai.data.pair_images_with_labels` gives.
        tta: use the method's test-time augmentation; ``None``: the predictor's own setting.
        spacing_lookup: pixel sizes for images whose files carry none (see :func:`read_pixel_size_csv`).
        batch_size: images per forward pass.
        keep_cases: keep the masks of this many best and worst images by Dice (for a report); 0 keeps none.
        head_labels: the head label's name(s) for the HC columns (see :func:`sscase_monai.biometry.biometry_columns`).
        reference_hc: reference HCs by image stem (:func:`read_reference_csv`): adds ``reference_hc_mm``,
            ``hc_abs_diff_mm`` and ``label_hc_abs_diff_mm`` columns and :attr:`EvaluationResult.hc_reference`.

    Returns:
        The per-image records (with the biometry columns of prediction and ground truth), the aggregated metrics and
        the kept cases.

    Raises:
        ValueError: no pairs; an unreadable image or label, label values outside the model's classes, or a label
            whose size differs from its image's (each message names the file).
    """
    if not pairs:
        raise ValueError("no labelled images to evaluate")
    num_classes = predictor.spec.num_classes
    images = [str(pair["image"]) for pair in pairs]
    predictions, labels, spacings, sources, measured = [], [], [], [], []
    stream = predictor.predict_many(images, batch_size=batch_size, tta=tta)
    for count, (pair, prediction) in enumerate(zip(pairs, stream, strict=True), start=1):
        label = read_label(pair["label"], num_classes)
        if label.shape != prediction.mask.shape:
            raise ValueError(
                f"label {pair['label']} has (H, W) = {label.shape} but its image {pair['image']} has "
                f"(H, W) = {prediction.mask.shape}"
            )
        spacing, source = resolve_pixel_spacing(pair["image"], prediction.geometry, spacing_lookup)
        # measured here, while the probabilities are at hand (they add the HC's uncertainty check)
        measured.append(
            biometry.biometry_columns(
                prediction.mask, spacing, predictor.spec.labels, head_labels, probabilities=prediction.probabilities
            )
            | biometry.biometry_columns(label, spacing, predictor.spec.labels, head_labels, prefix="label_")
        )
        predictions.append(prediction.mask.astype(np.uint8))
        labels.append(label)
        spacings.append(spacing)
        sources.append(source)
        if count % 50 == 0:
            logger.info("predicted %d of %d images", count, len(pairs))
    unit = "mm" if all(s is not None for s in spacings) else "px"
    metrics = segmentation_metrics(predictions, labels, num_classes, spacing=spacings if unit == "mm" else None)
    records = [
        _record(pair, p, t, num_classes, s, src, unit) | columns
        for pair, p, t, s, src, columns in zip(pairs, predictions, labels, spacings, sources, measured, strict=True)
    ]
    hc_reference = None
    if reference_hc is not None:
        for record in records:
            ref = reference_hc.get(record["name"])
            record["reference_hc_mm"] = ref
            for column in ("hc_mm", "label_hc_mm"):
                value = record.get(column)
                diff = abs(value - ref) if value is not None and ref is not None else None
                record[column.replace("hc_mm", "hc_abs_diff_mm")] = None if diff is None else round(diff, 3)
        hc_reference = hc_agreement(records, reference_hc)
    cases = [
        CaseResult(kind, rank, records[i], labels[i], predictions[i], spacings[i])
        for kind, rank, i in _select_cases(records, keep_cases)
    ]
    spacing_sources = {src: sources.count(src) for src in ("file", "table", "none")}
    logger.info("evaluated %d images: Dice %.4f (per-image mean)", len(records), metrics["mean"]["dice"])
    return EvaluationResult(records, metrics, num_classes, unit, spacing_sources, cases, hc_reference)
