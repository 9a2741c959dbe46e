"""One stage of the method: what trains, its optimiser and schedule, early stopping and the stage's best weights.

Stage 1 freezes the encoder (weights and batch-norm statistics) and trains the decoder and attention blocks; stages
2 and 3 train every layer. Each stage has its own Adam learning rate, epochs, early stopping on the validation loss
and ``ReduceLROnPlateau`` (:class:`~sscase_monai.training.config.StageConfig`). A stage's epochs and samples per image
can be re-planned when the stage starts, once its training set is known (:data:`StagePlanner`: stage 3 trains on the
labelled images plus however many pseudo-labels were accepted).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import Adam
from torch.optim.lr_scheduler import ReduceLROnPlateau

from sscase_monai.data import item_seed
from sscase_monai.training.checkpoints import cpu_state_dict, seed_everything
from sscase_monai.training.config import STAGE_NAMES, StageConfig, TrainingConfig
from sscase_monai.training.distributed import DistributedContext, broadcast_buffers, wrap_for_training
from sscase_monai.training.epoch_loop import EpochLoop, EpochTraining, ValidationResult
from sscase_monai.training.loaders import CachedItem, build_train_loader
from sscase_monai.training.schedule import EarlyStopping, plateau_scheduler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagePlan:
    """How long a stage trains: its most epochs and the augmented draws of each training image per epoch."""

    epochs: int
    samples_per_image: int

    def __post_init__(self) -> None:
        for name in ("epochs", "samples_per_image"):
            value = getattr(self, name)
            minimum = 0 if name == "epochs" else 1
            if int(value) != value or value < minimum:
                raise ValueError(f"stage plan {name} must be a whole number >= {minimum}, got {value!r}")


StagePlanner = Callable[[int, int], StagePlan]
"""``planner(stage, training_images) -> StagePlan``: called as each stage starts (stage 3 after pseudo-labelling)."""


@dataclass
class EpochRecord:
    """One finished epoch with the stage's optimisation state, for the caller's checkpoint, history and callbacks."""

    stage: int
    epoch: int
    training: EpochTraining
    validation: ValidationResult
    improved: bool
    lr: float
    started: float
    optimizer: torch.optim.Optimizer
    scheduler: ReduceLROnPlateau
    stopper: EarlyStopping
    best_state: Mapping[str, torch.Tensor] | None


@dataclass
class StageOutcome:
    """A stage that ran to its end (planned epochs or early stop); the model does not hold the best weights yet."""

    epochs_run: int
    stopper: EarlyStopping
    best_state: Mapping[str, torch.Tensor] | None


def stage_parameters(model: torch.nn.Module, stage: int) -> list[torch.nn.Parameter]:
    """Freeze or unfreeze the encoder for ``stage`` and return the parameters it trains."""
    if stage == 1:
        model.freeze_encoder()
        return list(model.decoder_parameters())
    if hasattr(model, "unfreeze_encoder"):  # baselines (ModelSpec.architecture) have no encoder to freeze
        model.unfreeze_encoder()
    return list(model.parameters())


def seed_epoch(seed: int, key: int, rank: int) -> None:
    """Every epoch's randomness (dropout, consistency views) depends only on (seed, stage, epoch, rank), so a resumed
    run draws exactly what an uninterrupted one would."""
    seed_everything(item_seed(seed, key, rank))


class StageLoop:
    """Runs one stage's epochs: optimiser, schedule and early stopping around the :class:`EpochLoop`.

    Args:
        config: the run's settings.
        context: the process's device and DDP rank.
        epoch_loop: training steps and validation.
        val_batches: this process's validation batches.
        on_epoch: called after every finished epoch (checkpoint, history, callbacks); may be None.
    """

    def __init__(
        self,
        config: TrainingConfig,
        context: DistributedContext,
        epoch_loop: EpochLoop,
        val_batches: Sequence[Mapping[str, torch.Tensor]],
        on_epoch: Callable[[EpochRecord], None] | None = None,
    ) -> None:
        self.config = config
        self.context = context
        self.epoch_loop = epoch_loop
        self.val_batches = val_batches
        self.on_epoch = on_epoch

    def run(
        self,
        stage: int,
        model: torch.nn.Module,
        train_cache: Sequence[CachedItem],
        plan: StagePlan,
        state: Mapping[str, Any] | None = None,
    ) -> StageOutcome | None:
        """Train ``model`` through one stage; None when a stop was requested (the checkpoint has the last epoch).

        Args:
            stage: 1, 2 or 3.
            model: the unwrapped network on its device.
            train_cache: the stage's preprocessed training items.
            plan: its epochs and samples per image.
            state: a checkpoint of this stage to continue (weights, optimiser, schedule, early stopping).
        """
        settings: StageConfig = self.config.stage(stage)
        optimizer = Adam(stage_parameters(model, stage), lr=settings.lr)
        scheduler = plateau_scheduler(optimizer, settings)
        stopper = EarlyStopping(settings.patience)
        best_state: Mapping[str, torch.Tensor] | None = None
        start_epoch = 0
        scaler = self.epoch_loop.scaler
        if state is not None:
            model.load_state_dict(state["model"])
            if not state["stage_complete"]:
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                stopper.load_state_dict(state["early_stopping"])
                if scaler is not None and state.get("scaler"):
                    scaler.load_state_dict(state["scaler"])
            best_state = state["best_state"]
            start_epoch = int(state["epoch"])
        # DDP fixes its parameter set when built: a new wrapper after every freeze/unfreeze
        network = wrap_for_training(model, self.context)
        loader, dataset, sampler = build_train_loader(
            train_cache,
            plan.samples_per_image,
            self.config.batch_size,
            self.config.seed,
            num_workers=self.config.num_workers,
            world_size=self.context.world_size,
            rank=self.context.rank,
            pin_memory=self.context.device.type == "cuda",
            cutout_prob=self.config.cutout_prob,
            input_size=self.config.spec.input_size,
        )
        logger.info(
            "stage %d (%s): %d image(s) x %d samples, %d epoch(s) planned, lr %g%s",
            stage,
            STAGE_NAMES[stage],
            len(train_cache),
            plan.samples_per_image,
            plan.epochs,
            settings.lr,
            f", resuming after epoch {start_epoch}" if start_epoch else "",
        )
        epochs_run = start_epoch
        for epoch in range(start_epoch + 1, plan.epochs + 1):
            if stopper.should_stop:
                break
            started = time.perf_counter()
            key = stage * 100_000 + epoch
            dataset.set_epoch(key)
            sampler.set_epoch(key)
            seed_epoch(self.config.seed, key, self.context.rank)
            description = f"stage {stage} epoch {epoch}/{plan.epochs}"
            training = self.epoch_loop.train_epoch(network, optimizer, loader, key, description)
            if training is None:
                return None
            broadcast_buffers(model, self.context)  # validate and save rank 0's batch-norm statistics everywhere
            validation = self.epoch_loop.validate(model, self.val_batches)
            improved = stopper.step(validation.loss, epoch)
            if improved:
                best_state = cpu_state_dict(model)
            lr = float(optimizer.param_groups[0]["lr"])
            scheduler.step(validation.loss)
            epochs_run = epoch
            if self.on_epoch is not None:
                record = EpochRecord(
                    stage, epoch, training, validation, improved, lr, started, optimizer, scheduler, stopper, best_state
                )
                self.on_epoch(record)
        if stopper.should_stop:
            logger.info(
                "stage %d: early stopping after epoch %d (best epoch %d)", stage, epochs_run, stopper.best_epoch
            )
        return StageOutcome(epochs_run, stopper, best_state)
