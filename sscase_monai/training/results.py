"""What a training run reports: its plan, each stage's result, the whole run's result, the epoch history file.

``history.csv`` has one row per finished epoch, columns :data:`HISTORY_COLUMNS` (losses per image, ``val_dice`` a
fraction, ``lr`` the learning rate the epoch used); ``sscase_monai.report`` draws learning curves from it.
"""

from __future__ import annotations

import csv
import io as text_io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sscase_monai.metrics import format_metrics_table
from sscase_monai.model_files import atomic_write_bytes
from sscase_monai.training.pseudo_label_files import PseudoLabelRecord

logger = logging.getLogger(__name__)

HISTORY_COLUMNS: tuple[str, ...] = (
    "stage",
    "stage_name",
    "epoch",
    "global_epoch",
    "train_loss",
    "consistency_loss",
    "val_loss",
    "val_dice",
    "lr",
    "seconds",
    "images_per_second",
)
"""Columns of ``history.csv`` (losses per image; ``val_dice`` a fraction; ``lr`` the epoch's learning rate)."""


@dataclass(frozen=True)
class TrainingPlan:
    """What a run is about to do (given to ``TrainingCallback.on_train_start``).

    Attributes:
        stages: the stages to run.
        epochs: planned epochs per stage.
        total_epochs: their sum.
        train_images: labelled training images.
        val_images: labelled validation images.
        unlabeled_images: images in the unlabelled pool.
        samples_per_image: augmented draws per image per epoch.
        batch_size: images per step and process.
        device: this process's device.
        world_size: number of DDP processes.
        resumed_from: ``(stage, finished epochs of it)`` when continuing a checkpoint, else ``None``.
        out_dir: the output folder.
    """

    stages: tuple[int, ...]
    epochs: dict[int, int]
    total_epochs: int
    train_images: int
    val_images: int
    unlabeled_images: int
    samples_per_image: int
    batch_size: int
    device: str
    world_size: int
    resumed_from: tuple[int, int] | None
    out_dir: str


@dataclass
class StageResult:
    """One finished stage.

    Attributes:
        stage: 1, 2 or 3.
        name: the stage's name.
        epochs_run: epochs trained (fewer than planned after early stopping).
        best_epoch: the epoch whose weights were kept (0: no epoch trained, the starting weights).
        best_val_loss: its validation loss.
        best_val_dice: its validation Dice (network input size, per-image mean).
        early_stopped: whether early stopping ended the stage.
        train_images: training images of the stage (labelled + accepted pseudo-labelled in stage 3).
        model_path: ``stage{n}_best.pt``.
        metrics: :func:`sscase_monai.metrics.segmentation_metrics` of the best weights on the validation images, on
            their original grids (computed by the main process, shared with the others).
    """

    stage: int
    name: str
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    best_val_dice: float
    early_stopped: bool
    train_images: int
    model_path: str
    metrics: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> StageResult:
        return cls(**dict(values))


@dataclass
class TrainingResult:
    """What a run produced.

    Attributes:
        out_dir: the output folder.
        model_path: ``out_dir/model.pt``, the last stage's best model; ``None`` when the run was stopped before the
            end (a stage's best model may exist: :attr:`best_model_path`).
        stages: every finished stage's result, by stage number (including stages finished in an earlier, resumed
            session).
        history: one dict per epoch (the rows of ``history.csv``).
        pseudo_labels: stage 3's records (empty without stage 3).
        stopped: a callback asked the run to stop.
        is_main: whether this process is the main one (the one that wrote the files and called the callbacks).
    """

    out_dir: Path
    model_path: Path | None
    stages: dict[int, StageResult] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    pseudo_labels: list[PseudoLabelRecord] = field(default_factory=list)
    stopped: bool = False
    is_main: bool = True

    @property
    def best_model_path(self) -> Path | None:
        """The final model, or after a stop the newest finished stage's best model (``None`` if there is none)."""
        if self.model_path is not None:
            return self.model_path
        return Path(self.stages[max(self.stages)].model_path) if self.stages else None

    @property
    def best_val_dice(self) -> float:
        """Validation Dice (network input size) of the final model's best epoch; NaN when no stage finished."""
        return self.stages[max(self.stages)].best_val_dice if self.stages else math.nan

    @property
    def final_metrics(self) -> dict[str, Any] | None:
        """Validation metrics of the final model (its stage's), or ``None``."""
        return self.stages[max(self.stages)].metrics if self.stages else None

    def metrics_table(self) -> str:
        """Markdown table of every finished stage's best validation metrics (per-image mean and pooled rows)."""
        table = {
            f"stage {n} ({result.name})": result.metrics for n, result in sorted(self.stages.items()) if result.metrics
        }
        return format_metrics_table(table) if table else ""


def json_safe(value: Any) -> Any:
    """NaN/inf -> None, tuples -> lists, paths -> str: strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_history_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Rewrite ``history.csv`` atomically (it stays readable while a run goes on)."""
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return atomic_write_bytes(path, lambda f: f.write(buffer.getvalue().encode("utf-8")))
