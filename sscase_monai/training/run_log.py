"""What a training run records as it goes: one row per epoch (``history.csv``), log lines and TensorBoard scalars.

Only the main process writes; every process keeps the same history (it goes into the resume checkpoint).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sscase_monai.method import STAGE_NAMES
from sscase_monai.training.callbacks import EpochSummary
from sscase_monai.training.results import HISTORY_COLUMNS, write_history_csv
from sscase_monai.training.stage_loop import EpochRecord

logger = logging.getLogger(__name__)

HISTORY_FILE = "history.csv"
TENSORBOARD_DIR = "tensorboard"


class RunLog:
    """The epoch history of a run, and where it is written.

    Args:
        out_dir: the run's output folder.
        write: write files and log lines (the main process only).
        tensorboard: also write TensorBoard event files to ``out_dir/tensorboard``.
        consistency: the run has a consistency term (its loss gets a TensorBoard curve).
    """

    def __init__(self, out_dir: str | os.PathLike, write: bool, tensorboard: bool, consistency: bool) -> None:
        self.out_dir = Path(out_dir)
        self.write = write
        self.tensorboard = tensorboard
        self.consistency = consistency
        self.rows: list[dict[str, Any]] = []
        self._writer: Any = None

    def restore(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Continue from a checkpoint's history; rows a killed session wrote after it are dropped from the file."""
        self.rows = [dict(row) for row in rows]
        self.write_csv()

    def write_csv(self) -> None:
        if self.write:
            write_history_csv(self.rows, self.out_dir / HISTORY_FILE)

    def summary(
        self,
        record: EpochRecord,
        epochs: Mapping[int, int],
        elapsed_seconds: float,
    ) -> EpochSummary:
        """The :class:`EpochSummary` of a finished epoch.

        Args:
            record: the epoch.
            epochs: planned epochs of every stage run, in order (for the global epoch and the total).
            elapsed_seconds: training time of the run so far, earlier sessions included.
        """
        stage = record.stage
        offset = sum(n for s, n in epochs.items() if s < stage)
        validation = record.validation
        dice_so_far = [float(r["val_dice"]) for r in self.rows if not math.isnan(float(r["val_dice"]))]
        training = record.training
        return EpochSummary(
            stage=stage,
            stage_name=STAGE_NAMES[stage],
            epoch=record.epoch,
            epochs=epochs[stage],
            global_epoch=offset + record.epoch,
            total_epochs=sum(epochs.values()),
            train_loss=training.loss,
            val_loss=validation.loss,
            val_dice=validation.dice,
            best_val_loss=record.stopper.best,
            best_val_dice=max([*dice_so_far, validation.dice]),
            improved=record.improved,
            lr=record.lr,
            seconds=time.perf_counter() - record.started,
            elapsed_seconds=elapsed_seconds,
            images_per_second=training.images_per_second,
            consistency_loss=training.consistency_loss,
        )

    def add(self, summary: EpochSummary) -> None:
        """Record a finished epoch (history row; on the main process also the log line and TensorBoard)."""
        self.rows.append({column: getattr(summary, column) for column in HISTORY_COLUMNS})
        if not self.write:
            return
        logger.info(summary.log_line())
        writer = self._tensorboard()
        if writer is None:
            return
        step = summary.global_epoch
        writer.add_scalar("loss/train", summary.train_loss, step)
        writer.add_scalar("loss/val", summary.val_loss, step)
        writer.add_scalar("dice/val", summary.val_dice, step)
        writer.add_scalar("lr", summary.lr, step)
        writer.add_scalar("stage", summary.stage, step)
        writer.add_scalar("images_per_second", summary.images_per_second, step)
        if self.consistency:
            writer.add_scalar("loss/consistency", summary.consistency_loss, step)
        writer.flush()

    def val_dice_at(self, stage: int, epoch: int) -> float:
        """The validation Dice recorded for ``stage``'s ``epoch`` (NaN when none)."""
        return next(
            (float(row["val_dice"]) for row in self.rows if row["stage"] == stage and row["epoch"] == epoch),
            math.nan,
        )

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _tensorboard(self) -> Any:
        if not self.tensorboard:
            return None
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events of an earlier session at the steps this one writes again
            first = int(self.rows[-2]["global_epoch"]) + 1 if len(self.rows) > 1 else 1
            self._writer = SummaryWriter(str(self.out_dir / TENSORBOARD_DIR), purge_step=first)
        return self._writer
