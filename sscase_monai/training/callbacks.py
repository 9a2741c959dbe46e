"""Hooks into a running :class:`~sscase_monai.training.SemiSupervisedTrainer` (progress, stop requests).

Subclass :class:`TrainingCallback` and override what you need; every hook is a no-op by default. The MONAI Label app
uses them to report progress (``on_epoch_end``), publish models (``on_stage_end``) and stop a run when the user asks
(``should_stop``).

Order of calls in one run::

    on_train_start(plan)
      on_pseudo_labels(records)                         # stage 3 only: pseudo-labels written, before its training
      on_stage_start(stage, name, epochs)               # per stage run (also for a stage resumed mid-way)
        should_stop()                                   # before every training iteration
        on_epoch_end(summary)                           # after validation, checkpoint and history.csv of an epoch
      on_stage_end(stage, result)                       # best weights restored, saved and scored
    on_train_end(result)                                # also after a stop (``result.stopped``)

A stop (``should_stop()`` returning True) discards the unfinished epoch: ``out_dir/checkpoints/last.pt`` holds the
last finished one, a run with ``resume=True`` continues from there, and the result has no final ``model_path``
(``result.best_model_path`` is the newest finished stage's best model). An exception raised by a hook ends the run
the same way (the checkpoint stays).

Under DistributedDataParallel (``torchrun``) the event hooks run in the main process (rank 0) only. ``should_stop``
runs in every process and the run stops, at the same iteration everywhere, when any process asks; this costs one
tiny all-reduce per iteration, so it is only done when some callback overrides ``should_stop``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sscase_monai.training.pseudo_label_files import PseudoLabelRecord
    from sscase_monai.training.results import StageResult, TrainingPlan, TrainingResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochSummary:
    """What one finished epoch reports.

    Attributes:
        stage: 1, 2 or 3.
        stage_name: ``"decoder-only"``, ``"full fine-tune"`` or ``"pseudo-label retrain"``.
        epoch: epoch within the stage, from 1.
        epochs: planned epochs of the stage (early stopping may end it sooner).
        global_epoch: position in the whole run: planned epochs of the earlier stages run + ``epoch``.
        total_epochs: planned epochs of every stage run (the denominator for a progress bar).
        train_loss: mean training loss (segmentation + consistency) over the epoch's images.
        val_loss: validation loss (eval mode, no augmentation).
        val_dice: validation Dice at the network's input size (per-image mean over foreground classes).
        best_val_loss: lowest validation loss of this stage so far.
        best_val_dice: highest validation Dice of the whole run so far.
        improved: this epoch's validation loss is the stage's best so far (its weights are kept).
        lr: learning rate used in the epoch.
        seconds: wall time of the epoch (training and validation).
        elapsed_seconds: wall time of the run so far (summed over resumed sessions).
        images_per_second: training throughput over all processes.
        consistency_loss: mean consistency term (0 when off).
    """

    stage: int
    stage_name: str
    epoch: int
    epochs: int
    global_epoch: int
    total_epochs: int
    train_loss: float
    val_loss: float
    val_dice: float
    best_val_loss: float
    best_val_dice: float
    improved: bool
    lr: float
    seconds: float
    elapsed_seconds: float
    images_per_second: float
    consistency_loss: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def log_line(self) -> str:
        """The one-line summary the trainer logs."""
        mark = " *" if self.improved else ""
        return (
            f"stage {self.stage} ({self.stage_name}) epoch {self.epoch}/{self.epochs}: "
            f"train loss {self.train_loss:.4f}, val loss {self.val_loss:.4f}{mark}, "
            f"val Dice {_percent(self.val_dice)}, "
            f"lr {self.lr:.3g}, {self.seconds:.1f} s, {self.images_per_second:.1f} img/s"
        )


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100.0 * value:.2f}%"


class TrainingCallback:
    """Base class of training hooks; override any subset. See the module docstring for when each is called."""

    def on_train_start(self, plan: TrainingPlan) -> None:
        """The run's plan: stages, epochs, item counts, device, world size, resumed state."""

    def on_stage_start(self, stage: int, name: str, epochs: int) -> None:
        """A stage begins (or resumes)."""

    def on_epoch_end(self, summary: EpochSummary) -> None:
        """An epoch finished: losses, Dice, LR, timings (see :class:`EpochSummary`)."""

    def on_stage_end(self, stage: int, result: StageResult) -> None:
        """A stage finished; ``result`` has its best epoch, losses, validation metrics and saved model file."""

    def on_pseudo_labels(self, records: list[PseudoLabelRecord]) -> None:
        """Stage 3's pseudo-labels were predicted and written (one record per unlabelled image)."""

    def on_train_end(self, result: TrainingResult) -> None:
        """The run ended (finished, or stopped: ``result.stopped``)."""

    def should_stop(self) -> bool:
        """Return True to stop the run before the next training iteration (cooperative stop)."""
        return False


class CallbackList:
    """Calls every callback's hook in order. Errors propagate: the run ends, and its last checkpoint can resume."""

    def __init__(self, callbacks: Iterable[TrainingCallback] = ()) -> None:
        self.callbacks = list(callbacks)

    def _each(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def on_train_start(self, plan: TrainingPlan) -> None:
        self._each("on_train_start", plan)

    def on_stage_start(self, stage: int, name: str, epochs: int) -> None:
        self._each("on_stage_start", stage, name, epochs)

    def on_epoch_end(self, summary: EpochSummary) -> None:
        self._each("on_epoch_end", summary)

    def on_stage_end(self, stage: int, result: StageResult) -> None:
        self._each("on_stage_end", stage, result)

    def on_pseudo_labels(self, records: list[PseudoLabelRecord]) -> None:
        self._each("on_pseudo_labels", records)

    def on_train_end(self, result: TrainingResult) -> None:
        self._each("on_train_end", result)

    def should_stop(self) -> bool:
        return any(callback.should_stop() for callback in self.callbacks)
