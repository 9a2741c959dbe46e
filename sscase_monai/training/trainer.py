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

This module runs the stages in order and owns the run's state (data checks, resume, the model, stage 3's
pseudo-labels, each stage's best model and scores). One stage's optimisation is :mod:`.stage_loop`, the steps of an
epoch are :mod:`.epoch_loop`, the history and TensorBoard records are :mod:`.run_log`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from sscase_monai import __version__, io
from sscase_monai.data import validate_labelled_pairs
from sscase_monai.evaluation import evaluate_model
from sscase_monai.inference import Predictor
from sscase_monai.model_files import atomic_write_bytes, load_model, read_sidecar, save_model
from sscase_monai.networks import SSCASEUNet
from sscase_monai.training.callbacks import CallbackList, TrainingCallback
from sscase_monai.training.checkpoints import (
    checkpoint_path,
    cpu_state_dict,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    seed_everything,
    set_rng_states,
)
from sscase_monai.training.config import STAGE_NAMES, TrainingConfig
from sscase_monai.training.distributed import (
    DistributedContext,
    barrier,
    cleanup_distributed,
    run_on_main,
    setup_distributed,
    unwrap,
)
from sscase_monai.training.epoch_loop import EpochLoop
from sscase_monai.training.loaders import batches, preprocess_items
from sscase_monai.training.pseudo_label_files import PseudoLabelRecord, generate_pseudo_labels, pseudo_label_paths
from sscase_monai.training.results import StageResult, TrainingPlan, TrainingResult, json_safe
from sscase_monai.training.run_log import RunLog
from sscase_monai.training.schedule import EarlyStopping
from sscase_monai.training.stage_loop import EpochRecord, StageLoop, StagePlan, StagePlanner
from sscase_monai.transforms import image_to_channel_first

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"


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


class SemiSupervisedTrainer:
    """Train SS_CASE_UNet with the method's three stages (or a chosen subset of them).

    Args:
        config: settings (model spec, stages and schedules, batch size, device, ...).
        train_items: labelled training items ``{"image": path, "label": path}``.
        val_items: labelled validation items (early stopping, LR schedule and reported metrics).
        unlabeled_items: ``{"image": path}`` items: stage 3's pool and the consistency term's images.
        out_dir: output folder (created).
        callbacks: progress and stop hooks (see :mod:`sscase_monai.training.callbacks`).
        stage_planner: re-plans each stage's epochs and samples per image when it starts, from its number of
            training images (stage 3: labelled + accepted pseudo-labels); ``None``: the configured epochs and
            ``samples_per_image``. The plans are kept in the checkpoint, so a resumed stage keeps its plan.

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
        stage_planner: StagePlanner | None = None,
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
        self.stage_planner = stage_planner
        self.spec = config.spec
        self.context = DistributedContext()
        self.completed: dict[int, StageResult] = {}
        self.pseudo_records: list[PseudoLabelRecord] = []
        self.plans = {s: StagePlan(config.stage(s).epochs, config.samples_per_image) for s in config.run_stages}
        self.replanned: dict[int, StagePlan] = {}  # the planner's plans, kept in the checkpoint
        self.log = RunLog(self.out_dir, write=False, tensorboard=False, consistency=False)
        self._elapsed_before = 0.0
        self._session_start = 0.0

    @property
    def history(self) -> list[dict[str, Any]]:
        """One row per finished epoch (the rows of ``history.csv``)."""
        return self.log.rows

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
            self.log.close()
            cleanup_distributed(self.context)

    @property
    def is_main(self) -> bool:
        return self.context.is_main

    @property
    def device(self) -> torch.device:
        return self.context.device

    def _run(self) -> TrainingResult:
        self._check_data()
        state = self._resume_state()
        if self.config.run_stages[0] == 3 and not self.config.init_weights and state is None:
            logger.warning("stage 3 without stage 2 or init weights: an untrained decoder predicts the pseudo-labels")
        seed_everything(self.config.seed)
        self._configure_backends()
        workers = self._preprocess_threads
        unlabeled_cache = (
            preprocess_items(self.unlabeled_items, self.spec, labelled=False, workers=workers)
            if self.config.consistency_weight > 0
            else []
        )
        should_stop = self.callbacks.should_stop if self._stoppable else None
        self.epoch_loop = EpochLoop(self.config, self.context, unlabeled_cache, should_stop)
        self.model = self._build_model(state)
        if 1 in self.config.run_stages and not callable(getattr(self.model, "freeze_encoder", None)):
            raise ValueError(
                f"stage 1 (decoder-only) freezes the encoder, but a {self.spec.architecture!r} network has no "
                f"freeze_encoder(); run stages (2,) or (2, 3) for it, got run_stages={self.config.run_stages!r}"
            )
        self.log = RunLog(
            self.out_dir,
            write=self.is_main,
            tensorboard=self.config.tensorboard,
            consistency=self.config.consistency_weight > 0,
        )
        if state is not None:
            self.completed = {int(k): StageResult.from_dict(v) for k, v in state["completed_stages"].items()}
            self.pseudo_records = [PseudoLabelRecord(**r) for r in state["pseudo_labels"]]
            if self.stage_planner is not None:  # without a planner the configured epochs apply (e.g. extended)
                self.replanned = {int(k): StagePlan(**v) for k, v in state.get("stage_plans", {}).items()}
                self.plans.update(self.replanned)
            self._elapsed_before = float(state["elapsed_seconds"])
            set_rng_states(state["rng"])
        self.log.restore(state["history"] if state is not None else [])
        self.train_cache = preprocess_items(self.train_items, self.spec, workers=workers)
        val_batches = batches(
            preprocess_items(self.val_items[self.context.rank :: self.context.world_size], self.spec, workers=workers),
            self.config.val_batch_size or self.config.batch_size,
        )
        self.stage_loop = StageLoop(self.config, self.context, self.epoch_loop, val_batches, self._on_epoch)
        if self.is_main:
            self.callbacks.on_train_start(self._training_plan(state))
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
        """Train one stage (stage 3 first makes its pseudo-labels), then keep, save and score its best weights."""
        train_cache = self.train_cache
        if stage == 3:
            accepted = self._pseudo_labelled_items(state)
            if accepted:
                train_cache = train_cache + preprocess_items(accepted, self.spec, workers=self._preprocess_threads)
        if self.stage_planner is not None and stage not in self.replanned:
            self.plans[stage] = self.replanned[stage] = self.stage_planner(stage, len(train_cache))
            logger.info("stage %d re-planned for %d training image(s): %s", stage, len(train_cache), self.plans[stage])
        if self.is_main:
            self.callbacks.on_stage_start(stage, STAGE_NAMES[stage], self.plans[stage].epochs)
        outcome = self.stage_loop.run(stage, self.model, train_cache, self.plans[stage], state)
        if outcome is None:
            return None
        return self._end_stage(stage, outcome.stopper, outcome.best_state, outcome.epochs_run, len(train_cache))

    def _on_epoch(self, record: EpochRecord) -> None:
        summary = self.log.summary(record, {s: p.epochs for s, p in self.plans.items()}, self._elapsed())
        self.log.add(summary)
        if self.is_main:
            self._save_state(
                record.stage,
                record.epoch,
                False,
                self.model,
                record.optimizer,
                record.scheduler,
                record.stopper,
                record.best_state,
            )
            self.log.write_csv()
            self.callbacks.on_epoch_end(summary)

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
        return self.epoch_loop.place(model)

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

    def _training_plan(self, state: Mapping[str, Any] | None) -> TrainingPlan:
        epochs = {s: self.plans[s].epochs for s in self.config.run_stages}
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
    # End of a stage, end of the run
    # ------------------------------------------------------------------------------------------------------------

    def _end_stage(
        self,
        stage: int,
        stopper: EarlyStopping,
        best_state: Mapping[str, torch.Tensor] | None,
        epochs_run: int,
        train_images: int,
    ) -> StageResult:
        """Restore the stage's best weights, save them, score them on the validation images' own grids."""
        model = self.model
        if best_state is not None:
            model.load_state_dict(best_state)
            best_loss = stopper.best
            best_dice = self.log.val_dice_at(stage, stopper.best_epoch)
        else:  # no epoch trained (or none improved): the starting weights are the stage's result
            validation = self.epoch_loop.validate(model, self.stage_loop.val_batches)
            best_loss, best_dice = validation.loss, validation.dice
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

    def _elapsed(self) -> float:
        return self._elapsed_before + time.monotonic() - self._session_start

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
        scaler = self.epoch_loop.scaler
        state = {
            "config": self.config.to_dict(),
            "stage": stage,
            "epoch": epoch,
            "stage_complete": complete,
            "model": cpu_state_dict(unwrap(model)),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "early_stopping": stopper.state_dict(),
            "best_state": dict(best_state) if best_state is not None else None,
            "completed_stages": {n: r.to_dict() for n, r in self.completed.items()},
            "stage_plans": {n: asdict(p) for n, p in self.replanned.items()},
            "history": list(self.history),
            "pseudo_labels": [r.to_dict() for r in self.pseudo_records] if stage == 3 else [],
            "rng": rng_states(),
            "elapsed_seconds": self._elapsed(),
            "train_images": [item["image"] for item in self.train_items],
        }
        save_checkpoint(self._checkpoint_path, state)


def _contiguous_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict in the default memory layout (a channels-last network's 4-D weights are strided otherwise)."""
    return {k: v.contiguous() for k, v in unwrap(model).state_dict().items()}
