"""Stage 3's pseudo-labels: predict the unlabelled pool, keep the confident masks, write them for review.

Prediction goes through :class:`sscase_monai.inference.Predictor`, the path users get from ``sscase-monai predict``
(same preprocessing, optional TTA, restored to each image's grid). The method's selection rule
(:func:`sscase_monai.pseudo_label_selection.select_confident_pseudo_labels`) is applied to the probabilities on the
image's own grid, i.e. to exactly the mask that is written. Accepted masks are written as
``out_dir/pseudo_labels/<stem>.<ext>`` in the image's format and geometry (JPEG -> PNG, DICOM -> NRRD, as
``predict`` does); ``out_dir/pseudo_labels.csv`` lists every unlabelled image with its verdict.
"""

from __future__ import annotations

import csv
import io as text_io
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sscase_monai import io
from sscase_monai.inference import Prediction, Predictor, prediction_path
from sscase_monai.method import PseudoLabelConfig
from sscase_monai.model_files import atomic_write_bytes
from sscase_monai.pseudo_label_selection import select_confident_pseudo_labels

logger = logging.getLogger(__name__)

PSEUDO_LABEL_DIR = "pseudo_labels"
PSEUDO_LABEL_CSV = "pseudo_labels.csv"
CSV_COLUMNS: tuple[str, ...] = ("image", "label", "confident_fraction", "foreground_pixels", "accepted")
_SELECTION_CHUNK = 32
"""Predictions held at once (on their original grids) before the rule is applied and the masks written."""


@dataclass(frozen=True)
class PseudoLabelRecord:
    """One unlabelled image's pseudo-label verdict.

    Attributes:
        image: the unlabelled image file.
        label: the written pseudo-label file (empty when rejected: nothing is written).
        confident_fraction: share of confident pixels on the image's grid.
        foreground_pixels: foreground pixels of the predicted mask.
        accepted: passed the rule, so it joins stage 3's training set.
    """

    image: str
    label: str
    confident_fraction: float
    foreground_pixels: int
    accepted: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pseudo_label_paths(images: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Where each image's pseudo-label goes: ``out_dir/pseudo_labels/<stem>.<ext>``.

    Raises:
        ValueError: two images would share a file (same name without extension).
    """
    folder = Path(out_dir) / PSEUDO_LABEL_DIR
    targets: dict[str, Path] = {}
    owners: dict[Path, str] = {}
    for image in images:
        target = prediction_path(image, folder)
        if target in owners:
            raise ValueError(
                f"unlabelled images {owners[target]} and {image} would share the pseudo-label file {target.name}; "
                "rename one of them"
            )
        owners[target] = str(image)
        targets[str(image)] = target
    return targets


def generate_pseudo_labels(
    predictor: Predictor,
    images: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: PseudoLabelConfig,
    batch_size: int = 8,
) -> list[PseudoLabelRecord]:
    """Predict every unlabelled image, write the accepted pseudo-labels and ``pseudo_labels.csv``.

    Args:
        predictor: the stage-2 best model (in eval mode).
        images: unlabelled image files.
        out_dir: the training output folder.
        config: the selection rule and whether to use TTA.
        batch_size: images per forward pass.

    Returns:
        One record per image, in input order.
    """
    images = list(images)
    targets = pseudo_label_paths(images, out_dir)
    folder = Path(out_dir) / PSEUDO_LABEL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():  # masks of an earlier run with other thresholds must not linger
        if stale.is_file() and io.is_image_file(stale):
            stale.unlink()
    records: list[PseudoLabelRecord] = []
    stream = predictor.predict_many([str(i) for i in images], batch_size=batch_size, tta=config.tta)
    chunk: list[Prediction] = []
    for count, prediction in enumerate(stream, start=1):
        chunk.append(prediction)
        if len(chunk) == _SELECTION_CHUNK or count == len(images):
            records += _select_and_write(chunk, images[len(records) : len(records) + len(chunk)], targets, config)
            chunk = []
    write_pseudo_label_csv(records, Path(out_dir) / PSEUDO_LABEL_CSV)
    accepted = sum(r.accepted for r in records)
    logger.info("pseudo-labels: accepted %d of %d unlabelled image(s), written to %s", accepted, len(records), folder)
    return records


def _select_and_write(
    predictions: Sequence[Prediction],
    images: Sequence[str | os.PathLike],
    targets: dict[str, Path],
    config: PseudoLabelConfig,
) -> list[PseudoLabelRecord]:
    candidates = select_confident_pseudo_labels(
        [p.probabilities for p in predictions],
        threshold=config.threshold,
        confidence=config.confidence,
        min_confident_fraction=config.min_confident_fraction,
        min_foreground_pixels=config.min_foreground_pixels,
    )
    records = []
    for image, prediction, candidate in zip(images, predictions, candidates, strict=True):
        label = ""
        if candidate.accepted:
            # class indices are the label values (as ``sscase-monai predict`` writes them)
            mask = candidate.mask[0].cpu().numpy().astype("uint8")
            label = str(io.write_mask(mask, prediction.geometry, targets[str(image)]))
        records.append(
            PseudoLabelRecord(
                image=str(image),
                label=label,
                confident_fraction=float(candidate.confident_fraction),
                foreground_pixels=int(candidate.foreground_pixels),
                accepted=bool(candidate.accepted),
            )
        )
    return records


def write_pseudo_label_csv(records: Sequence[PseudoLabelRecord], path: str | os.PathLike) -> Path:
    """``image, label, confident_fraction, foreground_pixels, accepted`` per image, written atomically."""
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        row = record.to_dict()
        row["confident_fraction"] = f"{record.confident_fraction:.6f}"
        writer.writerow(row)
    return atomic_write_bytes(path, lambda f: f.write(buffer.getvalue().encode("utf-8")))
