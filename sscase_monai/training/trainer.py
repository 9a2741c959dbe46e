"""The method's three-stage semi-supervised training, one plain PyTorch loop for the CLI and the MONAI Label app.

1. decoder-only: encoder frozen (weights and batch-norm statistics), decoder and attention blocks train;
2. full fine-tune: every layer;
3. pseudo-label retrain: the stage-2 best model predicts the unlabelled pool (``inference.Predictor``), the confident
   masks are written to ``out_dir/pseudo_labels/`` for review, and every layer trains on labelled + accepted images.

Each stage has its own Adam learning rate, epochs, early stopping on the validation loss (best weights restored
before the next stage) and ``ReduceLROnPlateau`` (see :mod:`sscase_monai.training.config`). Validation always uses
the labelled validation items, in eval mode. Output folder::

    model.pt + model.json          the final model (the last stage's best), loadable by Predictor.from_file
    stage{n}_best.pt + .json       each stage's best model
    history.csv                    one row per epoch (stage, epoch, losses, Dice, lr, timings)
    metrics.json                   each stage's best epoch and validation metrics on the images' own grids
    pseudo_labels/ + pseudo_labels.csv   stage 3's pseudo-labels and every unlabelled image's verdict
    checkpoints/last.pt            resume state after the last finished epoch
    tensorboard/                   TensorBoard event files

Under ``torchrun`` every process trains on its shard of each epoch's samples through DistributedDataParallel; only
the main process writes files, logs and calls the event callbacks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim import Adam
from torch.optim.lr_scheduler import ReduceLROnPlateau
from tqdm import tqdm

from sscase_monai import __version__, io
from sscase_monai.data import item_seed, validate_labelled_pairs
from sscase_monai.evaluation import evaluate_model
from sscase_monai.inference import Predictor
from sscase_monai.losses import ConsistencyLoss, SegmentationLoss
from sscase_monai.model_files import atomic_write_bytes, load_model, read_sidecar, save_model
from sscase_monai.networks import SSCASEUNet
from sscase_monai.training.callbacks import CallbackList, EpochSummary, TrainingCallback
from sscase_monai.training.checkpoints import (
    checkpoint_path,
    cpu_state_dict,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from sscase_monai.training.config import STAGE_NAMES, TrainingConfig
from sscase_monai.training.distributed import (
    DistributedContext,
    all_reduce_sum,
    any_process,
    barrier,
    broadcast_buffers,
    cleanup_distributed,
    run_on_main,
    setup_distributed,
    unwrap,
    wrap_for_training,
)
from sscase_monai.training.loaders import CachedItem, batches, build_train_loader, preprocess_items
from sscase_monai.training.pseudo_labelling import PseudoLabelRecord, generate_pseudo_labels, pseudo_label_paths
from sscase_monai.training.results import (
    HISTORY_COLUMNS,
    StageResult,
    TrainingPlan,
    TrainingResult,
    json_safe,
    write_history_csv,
)
from sscase_monai.training.schedule import EarlyStopping, plateau_scheduler
from sscase_monai.transforms import image_to_channel_first

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
TENSORBOARD_DIR = "tensorboard"
_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))
"""Consistency views: identity, horizontal, vertical, both (each its own inverse)."""


def stage_model_path(out_dir: str | os.PathLike, stage: int) -> Path:
    """``out_dir/stage{n}_best.pt``."""
    return Path(out_dir) / f"stage{stage}_best.pt"


def _items(items: Sequence[Mapping[str, Any]], keys: tuple[str, ...], what: str) -> list[dict[str, str]]:
    out = []
    for index, item in enumerate(items):
        missing = [key for key in keys if key not in item]
        if missing:
            raise ValueError(f"{what} item {index} has no {missing!r}: {dict(item)!r}")
        out.append({key: os.fspath(item[key]) for key in keys})
    return out


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def dice_per_image(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Hard Dice of each image, averaged over foreground classes; 1 when prediction and label are both empty.

    Args:
        logits: ``(B, C, H, W)`` network output (C = 1: sigmoid at 0.5; else argmax).
        labels: ``(B, 1, H, W)`` class indices.

    Returns:
        ``(B,)`` float32.
    """
    if logits.shape[1] == 1:
        prediction = (logits[:, 0] > 0).long()
        classes = [1]
    else:
        prediction = logits.argmax(dim=1)
        classes = list(range(1, logits.shape[1]))
    target = labels[:, 0].long()
    scores = []
    for c in classes:
        p, t = prediction == c, target == c
        overlap = (p & t).sum(dim=(1, 2)).float()
        total = (p.sum(dim=(1, 2)) + t.sum(dim=(1, 2))).float()
        scores.append(torch.where(total > 0, 2 * overlap / total.clamp(min=1), torch.ones_like(total)))
    return torch.stack(scores).mean(dim=0)


class SemiSupervisedTrainer:
    """Train SS_CASE_UNet with the method's three stages (or a chosen subset of them).

    Args:
        config: settings (model spec, stages and schedules, batch size, device, ...).
        train_items: labelled training items ``{"image": path, "label": path}``.
        val_items: labelled validation items (early stopping, LR schedule and reported metrics).
        unlabeled_items: ``{"image": path}`` items: stage 3's pool and the consistency term's images.
        out_dir: output folder (created).
        callbacks: progress and stop hooks (see :mod:`sscase_monai.training.callbacks`).

    Raises:
        ValueError: (in the constructor) no training or validation items, or items without their keys.

    Example::

        config = TrainingConfig(spec=ModelSpec(input_size=256), run_stages=(1, 2, 3))
        result = SemiSupervisedTrainer(config, train, val, unlabeled, "runs/a").run()
        print(result.model_path, result.metrics_table())
    """

    def __init__(
        self,
        config: TrainingConfig,
        train_items: Sequence[Mapping[str, Any]],
        val_items: Sequence[Mapping[str, Any]],
        unlabeled_items: Sequence[Mapping[str, Any]] = (),
        out_dir: str | os.PathLike = "train_output",
        callbacks: Sequence[TrainingCallback] = (),
    ) -> None:
        self.config = config
        self.train_items = _items(train_items, ("image", "label"), "training")
        self.val_items = _items(val_items, ("image", "label"), "validation")
        self.unlabeled_items = _items(unlabeled_items, ("image",), "unlabelled")
        if not self.train_items:
            raise ValueError("no labelled training images")
        if not self.val_items:
            raise ValueError("no labelled validation images: early stopping and the LR schedule need a validation set")
        self.out_dir = Path(out_dir)
        self.callbacks = CallbackList(callbacks)
        # without a callback that can ask to stop, DDP processes need not agree on stopping at every iteration
        self._stoppable = any(type(c).should_stop is not TrainingCallback.should_stop for c in callbacks)
        self.spec = config.spec
        self.context = DistributedContext()
        self.history: list[dict[str, Any]] = []
        self.completed: dict[int, StageResult] = {}
        self.pseudo_records: list[PseudoLabelRecord] = []
        self._writer: Any = None
        self._elapsed_before = 0.0
        self._session_start = 0.0

    # ------------------------------------------------------------------------------------------------------------
    # The run
    # ------------------------------------------------------------------------------------------------------------

    def run(self) -> TrainingResult:
        """Validate the data, then run the configured stages; returns where the models are and their metrics.

        Raises:
            ValueError: unusable data (every bad file named; ``DataValidationError`` for labelled pairs), a model
                file that does not fit, a checkpoint of another model, CUDA requested without a GPU, or stage 1 for
                a baseline network (``ModelSpec.architecture``) that has no encoder to freeze.
            FileNotFoundError: a missing ``init_weights`` file.
        """
        self._session_start = time.monotonic()
        self.context = setup_distributed(self.config.device)
        try:
            return self._run()
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            cleanup_distributed(self.context)

    @property
    def is_main(self) -> bool:
        return self.context.is_main

    @property
    def device(self) -> torch.device:
        return self.context.device

    @property
    def channels_last(self) -> bool:
        """Channels-last memory format: the setting, or by default on CPU only."""
        setting = self.config.channels_last
        return self.device.type == "cpu" if setting is None else bool(setting)

    def _run(self) -> TrainingResult:
        self._check_data()
        state = self._resume_state()
        if self.config.run_stages[0] == 3 and not self.config.init_weights and state is None:
            logger.warning("stage 3 without stage 2 or init weights: an untrained decoder predicts the pseudo-labels")
        seed_everything(self.config.seed)
        self._configure_backends()
        self.model = self._build_model(state)
        if 1 in self.config.run_stages and not callable(getattr(self.model, "freeze_encoder", None)):
            raise ValueError(
                f"stage 1 (decoder-only) freezes the encoder, but a {self.spec.architecture!r} network has no "
                f"freeze_encoder(); run stages (2,) or (2, 3) for it, got run_stages={self.config.run_stages!r}"
            )
        self.loss_fn = SegmentationLoss(self.spec.out_channels)
        activation = "sigmoid" if self.spec.out_channels == 1 else "softmax"
        self.consistency_fn = ConsistencyLoss(self.config.consistency_weight, activation=activation)
        self._setup_amp()
        if state is not None:
            self.history = list(state["history"])
            self.completed = {int(k): StageResult.from_dict(v) for k, v in state["completed_stages"].items()}
            self.pseudo_records = [PseudoLabelRecord(**r) for r in state["pseudo_labels"]]
            self._elapsed_before = float(state["elapsed_seconds"])
            set_rng_states(state["rng"])
        if self.is_main:  # a resumed run drops rows a killed session wrote after its last checkpoint
            write_history_csv(self.history, self.out_dir / HISTORY_FILE)
        workers = self._preprocess_threads
        self.train_cache = preprocess_items(self.train_items, self.spec, workers=workers)
        self.val_batches = batches(
            preprocess_items(self.val_items[self.context.rank :: self.context.world_size], self.spec, workers=workers),
            self.config.val_batch_size or self.config.batch_size,
        )
        self.unlabeled_cache = (
            preprocess_items(self.unlabeled_items, self.spec, labelled=False, workers=workers)
            if self.config.consistency_weight > 0
            else []
        )
        if self.is_main:
            self.callbacks.on_train_start(self._plan(state))
        stopped = False
        for stage in self.config.run_stages:
            if stage in self.completed:
                logger.info("stage %d (%s) was finished in an earlier session", stage, STAGE_NAMES[stage])
                continue
            stage_state = state if state is not None and int(state["stage"]) == stage else None
            result = self._run_stage(stage, stage_state)
            if result is None:
                stopped = True
                break
            self.completed[stage] = result
        model_path = None if stopped else self._finish_run()
        result = TrainingResult(
            out_dir=self.out_dir,
            model_path=model_path,
            stages=dict(self.completed),
            history=list(self.history),
            pseudo_labels=list(self.pseudo_records),
            stopped=stopped,
            is_main=self.is_main,
        )
        if stopped:
            logger.info("training stopped on request; resume with resume=True (checkpoint %s)", self._checkpoint_path)
        if self.is_main:
            self.callbacks.on_train_end(result)
        return result

    def _run_stage(self, stage: int, state: Mapping[str, Any] | None) -> StageResult | None:
        train_cache = self.train_cache
        if stage == 3:
            accepted = self._pseudo_labelled_items(state)
            if accepted:
                train_cache = train_cache + preprocess_items(accepted, self.spec, workers=self._preprocess_threads)
        return self._train_stage(stage, train_cache, state)

    # ------------------------------------------------------------------------------------------------------------
    # Setup
    # ------------------------------------------------------------------------------------------------------------

    @property
    def _preprocess_threads(self) -> int:
        # loading and the median filter release the GIL: a few threads shorten the one-off preprocessing
        return max(self.config.num_workers, min(4, os.cpu_count() or 1))

    @property
    def _checkpoint_path(self) -> Path:
        return checkpoint_path(self.out_dir)

    def _needs_unlabeled(self) -> bool:
        return 3 in self.config.run_stages or self.config.consistency_weight > 0

    def _check_data(self) -> None:
        """Every labelled pair and every needed unlabelled image is usable; bad files are named before training."""
        labelled = {str(Path(item["image"]).resolve()) for item in self.train_items + self.val_items}
        val_images = {str(Path(item["image"]).resolve()) for item in self.val_items}
        overlap = [item["image"] for item in self.train_items if str(Path(item["image"]).resolve()) in val_images]
        if overlap:
            logger.warning(
                "%d image(s) are in both the training and validation sets, e.g. %s", len(overlap), overlap[0]
            )
        validate_labelled_pairs(self.train_items + self.val_items, num_classes=self.spec.num_classes)
        pool = [item for item in self.unlabeled_items if str(Path(item["image"]).resolve()) not in labelled]
        if len(pool) < len(self.unlabeled_items):
            logger.info("left %d labelled image(s) out of the unlabelled pool", len(self.unlabeled_items) - len(pool))
        self.unlabeled_items = pool
        if not self._needs_unlabeled():
            return
        if not pool:
            if 3 in self.config.run_stages:
                logger.warning("stage 3 has no unlabelled images: it retrains on the labelled images only")
            if self.config.consistency_weight > 0:
                logger.warning("no unlabelled images: the consistency term is off")
            return
        problems = []
        for item in pool:
            try:
                array, _ = io.read_image(item["image"])
                image_to_channel_first(array, channels=self.spec.in_channels, source=item["image"])
            except ValueError as e:  # ImageReadError included
                problems.append(f"unlabelled image {e}")
        if problems:
            lines = "\n".join(f"  - {p}" for p in problems)
            raise ValueError(f"{len(problems)} problem(s) in {len(pool)} unlabelled image(s):\n{lines}")
        pseudo_label_paths([item["image"] for item in pool], self.out_dir)  # two images must not share a file
        logger.info("checked %d unlabelled image(s): all usable", len(pool))

    def _resume_state(self) -> dict[str, Any] | None:
        path = self._checkpoint_path
        if not self.config.resume:
            if path.is_file() and self.is_main:
                logger.warning("%s exists: starting a new run that will overwrite it (resume=True continues it)", path)
            return None
        if not path.is_file():
            logger.info("no checkpoint at %s: starting from the beginning", path)
            return None
        state = load_checkpoint(path)
        saved = TrainingConfig.from_dict(state["config"])
        if saved.spec != self.spec:
            raise ValueError(
                f"{path} is a checkpoint of another model ({saved.spec}); this run trains {self.spec}. "
                "Use another output folder, or the same model settings to resume"
            )
        if saved.seed != self.config.seed:
            logger.warning("resuming with seed %d; the checkpoint was made with seed %d", self.config.seed, saved.seed)
        if state.get("train_images") != [item["image"] for item in self.train_items]:
            logger.warning("the training images differ from the checkpoint's run")
        logger.info(
            "resuming from %s: stage %d, %d epoch(s) done%s",
            path,
            int(state["stage"]),
            int(state["epoch"]),
            " (stage finished)" if state["stage_complete"] else "",
        )
        return state

    def _configure_backends(self) -> None:
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not self.config.deterministic
            torch.backends.cudnn.deterministic = self.config.deterministic
            if self.config.deterministic:
                torch.use_deterministic_algorithms(True, warn_only=True)

    def _setup_amp(self) -> None:
        self.amp_dtype: torch.dtype | None = None
        if self.config.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _build_model(self, state: Mapping[str, Any] | None) -> SSCASEUNet:
        init = self.config.init_weights
        if state is not None:
            if init:
                logger.info("resuming: the checkpoint's weights replace init weights %s", init)
            model = self.spec.build_network()
            model.load_state_dict(state["model"])
        elif init:
            model = self._load_init_weights(Path(init))
        else:
            model = self.spec.build_network(pretrained=self.config.pretrained or None)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _load_init_weights(self, path: Path) -> SSCASEUNet:
        saved = read_sidecar(path).get("spec")
        if saved:
            for key in ("encoder", "in_channels", "out_channels"):
                if saved.get(key) != getattr(self.spec, key):
                    raise ValueError(
                        f"init weights {path} are for {key}={saved.get(key)!r}, but this run trains "
                        f"{key}={getattr(self.spec, key)!r}"
                    )
        network, _ = load_model(path, spec=self.spec)
        logger.info("starting from the weights of %s", path)
        return network.train()

    def _plan(self, state: Mapping[str, Any] | None) -> TrainingPlan:
        epochs = {s: self.config.stage(s).epochs for s in self.config.run_stages}
        return TrainingPlan(
            stages=self.config.run_stages,
            epochs=epochs,
            total_epochs=sum(epochs.values()),
            train_images=len(self.train_items),
            val_images=len(self.val_items),
            unlabeled_images=len(self.unlabeled_items),
            samples_per_image=self.config.samples_per_image,
            batch_size=self.config.batch_size,
            device=str(self.device),
            world_size=self.context.world_size,
            resumed_from=(int(state["stage"]), int(state["epoch"])) if state is not None else None,
            out_dir=str(self.out_dir),
        )

    # ------------------------------------------------------------------------------------------------------------
    # Stage 3's pseudo-labels
    # ------------------------------------------------------------------------------------------------------------

    def _pseudo_labelled_items(self, state: Mapping[str, Any] | None) -> list[dict[str, str]]:
        if state is not None and state.get("pseudo_labels"):
            logger.info("stage 3 resumes with the pseudo-labels made before the interruption")
        elif self.unlabeled_items:
            self.pseudo_records = run_on_main(self._predict_pseudo_labels, self.context)
            if self.is_main:
                self.callbacks.on_pseudo_labels(list(self.pseudo_records))
        else:
            self.pseudo_records = []
        return [{"image": r.image, "label": r.label} for r in self.pseudo_records if r.accepted]

    def _predict_pseudo_labels(self) -> list[PseudoLabelRecord]:
        predictor = Predictor(self.model, self.spec, device=self.device, tta=self.config.pseudo_labels.tta)
        images = [item["image"] for item in self.unlabeled_items]
        return generate_pseudo_labels(
            predictor, images, self.out_dir, self.config.pseudo_labels, batch_size=self.config.batch_size
        )

    # ------------------------------------------------------------------------------------------------------------
    # One stage
    # ------------------------------------------------------------------------------------------------------------

    def _train_stage(
        self, stage: int, train_cache: Sequence[CachedItem], state: Mapping[str, Any] | None
    ) -> StageResult | None:
        settings = self.config.stage(stage)
        name = STAGE_NAMES[stage]
        model = self.model
        if stage == 1:
            model.freeze_encoder()
            parameters = list(model.decoder_parameters())
        else:
            if hasattr(model, "unfreeze_encoder"):  # baselines (ModelSpec.architecture) have no encoder to freeze
                model.unfreeze_encoder()
            parameters = list(model.parameters())
        optimizer = Adam(parameters, lr=settings.lr)
        scheduler = plateau_scheduler(optimizer, settings)
        stopper = EarlyStopping(settings.patience)
        best_state: dict[str, torch.Tensor] | None = None
        start_epoch = 0
        if state is not None:
            model.load_state_dict(state["model"])
            if not state["stage_complete"]:
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                stopper.load_state_dict(state["early_stopping"])
                if self.scaler is not None and state.get("scaler"):
                    self.scaler.load_state_dict(state["scaler"])
            best_state = state["best_state"]
            start_epoch = int(state["epoch"])
        # DDP fixes its parameter set when built: a new wrapper after every freeze/unfreeze
        network = wrap_for_training(model, self.context)
        loader, dataset, sampler = build_train_loader(
            train_cache,
            self.config.samples_per_image,
            self.config.batch_size,
            self.config.seed,
            num_workers=self.config.num_workers,
            world_size=self.context.world_size,
            rank=self.context.rank,
            pin_memory=self.device.type == "cuda",
        )
        logger.info(
            "stage %d (%s): %d image(s) x %d samples, %d epoch(s) planned, lr %g%s",
            stage,
            name,
            len(train_cache),
            self.config.samples_per_image,
            settings.epochs,
            settings.lr,
            f", resuming after epoch {start_epoch}" if start_epoch else "",
        )
        if self.is_main:
            self.callbacks.on_stage_start(stage, name, settings.epochs)
        epochs_run = start_epoch
        for epoch in range(start_epoch + 1, settings.epochs + 1):
            if stopper.should_stop:
                break
            epoch_start = time.perf_counter()
            key = stage * 100_000 + epoch
            dataset.set_epoch(key)
            sampler.set_epoch(key)
            self._seed_epoch(key)
            trained = self._train_epoch(network, optimizer, loader, stage, epoch, settings.epochs, key)
            if trained is None:
                return None
            broadcast_buffers(model, self.context)  # validate and save rank 0's batch-norm statistics everywhere
            validation = self._validate()
            improved = stopper.step(validation[0], epoch)
            if improved:
                best_state = cpu_state_dict(model)
            lr = float(optimizer.param_groups[0]["lr"])
            scheduler.step(validation[0])
            epochs_run = epoch
            summary = self._summary(stage, epoch, trained, validation, stopper, improved, lr, epoch_start)
            self.history.append(self._history_row(summary))
            if self.is_main:
                self._save_state(stage, epoch, False, model, optimizer, scheduler, stopper, best_state)
                write_history_csv(self.history, self.out_dir / HISTORY_FILE)
                self._log_epoch(summary)
                self.callbacks.on_epoch_end(summary)
        if stopper.should_stop:
            logger.info(
                "stage %d: early stopping after epoch %d (best epoch %d)", stage, epochs_run, stopper.best_epoch
            )
        return self._end_stage(stage, model, stopper, best_state, epochs_run, len(train_cache))

    def _seed_epoch(self, key: int) -> None:
        # every epoch's randomness (dropout, consistency views) depends only on (seed, stage, epoch, rank), so a
        # resumed run draws exactly what an uninterrupted one would
        seed_everything(item_seed(self.config.seed, key, self.context.rank))

    def _train_epoch(
        self,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: torch.utils.data.DataLoader,
        stage: int,
        epoch: int,
        epochs: int,
        key: int,
    ) -> tuple[float, float, int, float] | None:
        """One pass over the epoch's samples; ``(train_loss, consistency_loss, images, seconds)`` or None if stopped."""
        network.train()
        generator = torch.Generator().manual_seed(item_seed(self.config.seed, key, 1000 + self.context.rank))
        loader.generator.manual_seed(item_seed(self.config.seed, key, 2000))
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        consistency_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        images = 0
        show = self.config.progress and self.is_main and sys.stderr.isatty()
        progress = tqdm(
            loader, desc=f"stage {stage} epoch {epoch}/{epochs}", unit="batch", leave=False, disable=not show
        )
        start = time.perf_counter()
        for step, batch in enumerate(progress):
            if self._stoppable and any_process(self.callbacks.should_stop(), self.context):
                progress.close()
                return None
            loss, consistency, count = self._train_step(network, optimizer, batch, generator)
            loss_sum += loss * count
            consistency_sum += consistency * count
            images += count
            if show and step % 10 == 0:
                progress.set_postfix(loss=f"{float(loss_sum) / images:.4f}")
        progress.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        totals = torch.stack([loss_sum, consistency_sum, torch.tensor(float(images), device=self.device)])
        totals = all_reduce_sum(totals.to(torch.float64), self.context)
        images = int(totals[2].item())
        return float(totals[0]) / max(images, 1), float(totals[1]) / max(images, 1), images, seconds

    def _train_step(
        self,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        batch: Mapping[str, torch.Tensor],
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True).long()
        count = images.shape[0]
        views = self._consistency_views(count, generator)
        inputs = images if views is None else torch.cat([images, views[0], views[1]])
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            logits = network(inputs)
        logits = logits.float()
        loss = self.loss_fn(logits[:count], labels)
        consistency = torch.zeros((), device=self.device)
        if views is not None:
            flip_a, flip_b = views[2], views[3]
            unlabeled = (logits.shape[0] - count) // 2
            aligned_a = _flip(logits[count : count + unlabeled], flip_a)
            aligned_b = _flip(logits[count + unlabeled :], flip_b)
            consistency = self.consistency_fn(aligned_a, aligned_b)
            loss = loss + consistency
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return loss.detach(), consistency.detach(), count

    def _consistency_views(
        self, count: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...], tuple[int, ...]] | None:
        """A batch of unlabelled images as two differently flipped views, and the two flips."""
        if not self.unlabeled_cache or self.config.consistency_weight <= 0:
            return None
        indices = torch.randint(len(self.unlabeled_cache), (count,), generator=generator).tolist()
        images = torch.stack([self.unlabeled_cache[i]["image"] for i in indices]).to(self.device, non_blocking=True)
        first, second = (int(i) for i in torch.randperm(len(_FLIPS), generator=generator)[:2])
        flip_a, flip_b = _FLIPS[first], _FLIPS[second]
        return _flip(images, flip_a), _flip(images, flip_b), flip_a, flip_b

    @torch.no_grad()
    def _validate(self) -> tuple[float, float]:
        """Validation loss and per-image Dice over all processes' shards (eval mode, the unwrapped network)."""
        model = unwrap(self.model)
        model.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, Dice sum, images
        for batch in self.val_batches:
            images = batch["image"].to(self.device, non_blocking=True)
            labels = batch["label"].to(self.device, non_blocking=True).long()
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                logits = model(images)
            logits = logits.float()
            count = images.shape[0]
            totals[0] += float(self.loss_fn(logits, labels)) * count
            totals[1] += float(dice_per_image(logits, labels).sum())
            totals[2] += count
        totals = all_reduce_sum(totals, self.context)
        images = max(float(totals[2]), 1.0)
        return float(totals[0]) / images, float(totals[1]) / images

    def _end_stage(
        self,
        stage: int,
        model: SSCASEUNet,
        stopper: EarlyStopping,
        best_state: Mapping[str, torch.Tensor] | None,
        epochs_run: int,
        train_images: int,
    ) -> StageResult:
        """Restore the stage's best weights, save them, score them on the validation images' own grids."""
        if best_state is not None:
            model.load_state_dict(best_state)
            best_loss = stopper.best
            best_dice = next(
                (
                    float(row["val_dice"])
                    for row in self.history
                    if row["stage"] == stage and row["epoch"] == stopper.best_epoch
                ),
                math.nan,
            )
        else:  # no epoch trained (or none improved): the starting weights are the stage's result
            best_loss, best_dice = self._validate()
        result = StageResult(
            stage=stage,
            name=STAGE_NAMES[stage],
            epochs_run=epochs_run,
            best_epoch=stopper.best_epoch if best_state is not None else 0,
            best_val_loss=best_loss,
            best_val_dice=best_dice,
            early_stopped=stopper.should_stop,
            train_images=train_images,
            model_path=str(stage_model_path(self.out_dir, stage)),
        )
        result.metrics = run_on_main(self._evaluate, self.context)
        if self.is_main:
            save_model(result.model_path, _contiguous_state(model), self.spec, extra=self._model_extra(result))
            self.completed[stage] = result
            self._save_state(stage, epochs_run, True, model, None, None, stopper, None)
            logger.info(
                "stage %d (%s) done: best epoch %d, val loss %.4f, val Dice %.4f; saved %s",
                stage,
                result.name,
                result.best_epoch,
                result.best_val_loss,
                result.best_val_dice,
                result.model_path,
            )
            self.callbacks.on_stage_end(stage, result)
        barrier(self.context)
        return result

    def _evaluate(self) -> dict[str, Any]:
        """Segmentation metrics of the current weights on the validation images, restored to their own grids."""
        predictor = Predictor(unwrap(self.model), self.spec, device=self.device, amp=self.config.amp)
        batch_size = self.config.val_batch_size or self.config.batch_size
        return evaluate_model(predictor, self.val_items, tta=False, batch_size=batch_size).metrics

    def _finish_run(self) -> Path | None:
        """Save the final model (the last stage's best weights, which the network holds) and ``metrics.json``."""
        if not self.completed:
            return None
        path = self.out_dir / MODEL_FILE
        last = self.completed[max(self.completed)]
        if self.is_main:
            save_model(path, _contiguous_state(self.model), self.spec, extra=self._model_extra(last))
            summary = {
                "model": str(path),
                "stages": {str(n): r.to_dict() for n, r in sorted(self.completed.items())},
                "pseudo_labels": {
                    "images": len(self.pseudo_records),
                    "accepted": sum(r.accepted for r in self.pseudo_records),
                },
            }
            text = json.dumps(json_safe(summary), indent=2)
            atomic_write_bytes(self.out_dir / METRICS_FILE, lambda f: f.write(text.encode("utf-8")))
            logger.info("saved the final model (stage %d's best) to %s", last.stage, path)
        barrier(self.context)
        return path

    # ------------------------------------------------------------------------------------------------------------
    # Records
    # ------------------------------------------------------------------------------------------------------------

    def _summary(
        self,
        stage: int,
        epoch: int,
        trained: tuple[float, float, int, float],
        validation: tuple[float, float],
        stopper: EarlyStopping,
        improved: bool,
        lr: float,
        epoch_start: float,
    ) -> EpochSummary:
        train_loss, consistency_loss, images, train_seconds = trained
        val_loss, val_dice = validation
        offset = sum(self.config.stage(s).epochs for s in self.config.run_stages if s < stage)
        dice_so_far = [float(r["val_dice"]) for r in self.history if not math.isnan(float(r["val_dice"]))]
        return EpochSummary(
            stage=stage,
            stage_name=STAGE_NAMES[stage],
            epoch=epoch,
            epochs=self.config.stage(stage).epochs,
            global_epoch=offset + epoch,
            total_epochs=self.config.planned_epochs,
            train_loss=train_loss,
            val_loss=val_loss,
            val_dice=val_dice,
            best_val_loss=stopper.best,
            best_val_dice=max([*dice_so_far, val_dice]),
            improved=improved,
            lr=lr,
            seconds=time.perf_counter() - epoch_start,
            elapsed_seconds=self._elapsed(),
            images_per_second=images / max(train_seconds, 1e-9),
            consistency_loss=consistency_loss,
        )

    @staticmethod
    def _history_row(summary: EpochSummary) -> dict[str, Any]:
        return {column: getattr(summary, column) for column in HISTORY_COLUMNS}

    def _elapsed(self) -> float:
        return self._elapsed_before + time.monotonic() - self._session_start

    def _log_epoch(self, summary: EpochSummary) -> None:
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
        if self.config.consistency_weight > 0:
            writer.add_scalar("loss/consistency", summary.consistency_loss, step)
        writer.flush()

    def _tensorboard(self) -> Any:
        if not self.config.tensorboard:
            return None
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events of an earlier session at the steps this one writes again
            first = int(self.history[-2]["global_epoch"]) + 1 if len(self.history) > 1 else 1
            self._writer = SummaryWriter(str(self.out_dir / TENSORBOARD_DIR), purge_step=first)
        return self._writer

    def _model_extra(self, result: StageResult) -> dict[str, Any]:
        metrics = result.metrics or {}
        training = {
            "stage": result.stage,
            "stage_name": result.name,
            "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val_loss,
            "best_val_dice": result.best_val_dice,
            "validation_metrics": {k: metrics.get(k) for k in ("num_images", "hd95_unit", "mean", "pooled")},
            "stages": {
                str(n): {k: v for k, v in r.to_dict().items() if k != "metrics"}
                for n, r in sorted(self.completed.items())
                if n != result.stage
            },
            "train_images": len(self.train_items),
            "val_images": len(self.val_items),
            "pseudo_labelled_images": sum(r.accepted for r in self.pseudo_records) if result.stage == 3 else 0,
            "config": self.config.to_dict(),
            "sscase_monai_version": __version__,
        }
        return {"training": json_safe(training)}

    def _save_state(
        self,
        stage: int,
        epoch: int,
        complete: bool,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        scheduler: ReduceLROnPlateau | None,
        stopper: EarlyStopping,
        best_state: Mapping[str, torch.Tensor] | None,
    ) -> None:
        state = {
            "config": self.config.to_dict(),
            "stage": stage,
            "epoch": epoch,
            "stage_complete": complete,
            "model": cpu_state_dict(unwrap(model)),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "early_stopping": stopper.state_dict(),
            "best_state": dict(best_state) if best_state is not None else None,
            "completed_stages": {n: r.to_dict() for n, r in self.completed.items()},
            "history": list(self.history),
            "pseudo_labels": [r.to_dict() for r in self.pseudo_records] if stage == 3 else [],
            "rng": rng_states(),
            "elapsed_seconds": self._elapsed(),
            "train_images": [item["image"] for item in self.train_items],
        }
        save_checkpoint(self._checkpoint_path, state)


def _flip(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return torch.flip(x, dims=dims) if dims else x


def _contiguous_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict in the default memory layout (a channels-last network's 4-D weights are strided otherwise)."""
    return {k: v.contiguous() for k, v in unwrap(model).state_dict().items()}
