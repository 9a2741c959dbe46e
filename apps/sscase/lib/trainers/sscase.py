"""Train task: the library's three-stage semi-supervised trainer on the datastore, with progress for 3D Slicer."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.others.generic import strtobool

from sscase_monai.data import split_by_exam
from sscase_monai.model_files import (
    ModelSpec,
    atomic_copy,
    atomic_write_bytes,
    last_existing_path,
    read_sidecar,
    sidecar_path,
)
from sscase_monai.training import (
    EpochSummary,
    PseudoLabelConfig,
    SemiSupervisedTrainer,
    TrainingCallback,
    TrainingConfig,
    checkpoint_path,
)
from sscase_monai.training.schedules import expected_cpu_seconds, format_duration, uses_cuda

logger = logging.getLogger(__name__)

PSEUDO_TAG = "pseudo"


@dataclass(frozen=True)
class TrainingPlan:
    """A checked training request: its config, options, data split and (on a CPU) expected seconds."""

    config: TrainingConfig
    options: dict[str, Any]
    train: list[dict]
    val: list[dict]
    unlabelled: list[dict]
    expected_seconds: float | None


class SSCASETrain(TrainTask):
    """Run stages 1-3 on the datastore: labelled = images with a ``final`` label, unlabelled = the rest.

    Progress goes to ``model_dir/train_stats.json`` after every epoch (``/info`` -> ``train_stats``, which Slicer's
    progress and accuracy bars read); the best model is published atomically to ``publish_path`` at the end, where
    the infer task picks it up at its next request. Accepted pseudo-labels are saved under the tag ``pseudo``.

    Args:
        model_dir: this model's training folder (checkpoints, logs, stats).
        publish_path: where the trained model goes (``model/sscase.pt``).
        spec: network and preprocessing to train.
        pretrained: ImageNet encoder weights for a fresh start (``True``, ``False`` or a file).
        defaults: training options shown in Slicer's Train options (see the config).
        init_paths: model files a fine-tune may start from, lowest priority first.
    """

    def __init__(
        self,
        model_dir: str,
        publish_path: str,
        spec: ModelSpec,
        pretrained: bool | str,
        defaults: dict[str, Any],
        init_paths: Sequence[str | None] = (),
    ) -> None:
        super().__init__("SS_CASE_UNet: decoder-only, full fine-tune, then pseudo-labels on unlabelled images")
        self.model_dir = model_dir
        self.publish_path = publish_path
        self.spec = spec
        self.pretrained = pretrained
        self.defaults = defaults
        self.init_paths = [p for p in init_paths if p]
        self.stats_path = os.path.join(model_dir, "train_stats.json")

    def config(self) -> dict[str, Any]:
        return dict(self.defaults)

    def stats(self) -> dict[str, Any]:
        try:
            with open(self.stats_path) as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def plan(self, request: dict, datastore: Datastore) -> TrainingPlan:
        """The run a request asks for, checked: its config and data split.

        Raises:
            HTTPException: 400 for an invalid option, 409 with fewer than 2 final labels (one validates).
        """
        options = {**self.defaults, **{k: v for k, v in request.items() if k in self.defaults}}
        config = self._training_config(options)
        labelled = datastore.datalist()
        if len(labelled) < 2:
            raise HTTPException(
                409,
                f"training needs at least 2 images with a final label (one validates the model); "
                f"{len(labelled)} of {len(datastore.list_images())} have one: label more with Submit Label",
            )
        train_items, val_items = split_by_exam(labelled, float(options["val_split"]), seed=config.seed)
        unlabelled = [{"image": datastore.get_image_uri(i)} for i in sorted(datastore.get_unlabeled_images())]
        expected = None
        if not uses_cuda(config.device):
            expected = expected_cpu_seconds(config, len(train_items), len(val_items), len(unlabelled))
        return TrainingPlan(config, options, train_items, val_items, unlabelled, expected)

    def start_stats(self, plan: TrainingPlan) -> SlicerProgress:
        """Publish epoch 0 of the planned epochs, so Slicer's progress bar starts at the start (it shows 100 % for
        empty stats); the accuracy stays the current model's until an epoch ends. Returns the progress writer."""
        progress = SlicerProgress(self.stats_path)
        progress.start(plan, previous=self.stats())
        return progress

    def __call__(self, request: dict, datastore: Datastore) -> dict[str, Any]:
        plan = self.plan(request, datastore)
        config, options = plan.config, plan.options
        out_dir = os.path.join(self.model_dir, "train")
        if not config.resume and os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        logger.info(
            "training on %d labelled (%d validation) and %d unlabelled images -> %s; %d epochs planned%s",
            len(plan.train),
            len(plan.val),
            len(plan.unlabelled),
            out_dir,
            config.planned_epochs,
            f", expected about {format_duration(plan.expected_seconds)} on this CPU" if plan.expected_seconds else "",
        )
        progress = self.start_stats(plan)  # again: a training run without the server's route (run_sync) starts here
        callbacks: list[TrainingCallback] = [progress]
        if strtobool(str(options["pseudo_labels"])):
            callbacks.append(PseudoLabelsToDatastore(datastore))
        trainer = SemiSupervisedTrainer(config, plan.train, plan.val, plan.unlabelled, out_dir, callbacks=callbacks)
        result = trainer.run()
        if result.stopped:
            return {"status": "stopped", "resume": "start training again to continue from the last epoch"}
        published = self._publish(result.model_path, result)
        progress.finish(result)
        # the run is complete: the next Train starts a new one instead of "resuming" into nothing left to do
        checkpoint_path(out_dir).unlink(missing_ok=True)
        return {"status": "done", "model": published, "best_val_dice": result.best_val_dice}

    def _training_config(self, options: dict[str, Any]) -> TrainingConfig:
        init = last_existing_path(self.init_paths)
        from_current = strtobool(str(options["init_from_current_model"])) and init is not None
        try:
            config = TrainingConfig(
                spec=self.spec,
                pretrained=self.pretrained,
                init_weights=init if from_current else None,
                run_stages=parse_ints(options["stages"]),
                batch_size=int(options["batch_size"]),
                samples_per_image=int(options["samples_per_image"]),
                num_workers=int(options["num_workers"]),
                device=str(options["device"]),
                seed=int(options["seed"]),
                consistency_weight=float(options["consistency_weight"]),
                pseudo_labels=PseudoLabelConfig(
                    confidence=float(options["pseudo_confidence"]),
                    min_confident_fraction=float(options["pseudo_min_fraction"]),
                    min_foreground_pixels=int(options["pseudo_min_pixels"]),
                ),
                resume=strtobool(str(options["resume"])),
                progress=False,
            )
            return config.with_stage_settings(
                epochs=parse_ints(options["epochs"]), lr=[float(v) for v in str(options["learning_rates"]).split(",")]
            )
        except (TypeError, ValueError) as e:
            raise HTTPException(400, f"invalid training option: {e}") from e

    def _publish(self, model_path: str, result: Any) -> str:
        """Copy the run's best model (and its sidecar) to the published path: sidecar first, both atomically."""
        extra = {**read_sidecar(model_path), "published": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_bytes(sidecar_path(self.publish_path), lambda out: out.write(json.dumps(extra, indent=2).encode()))
        atomic_copy(model_path, self.publish_path)
        logger.info("published %s -> %s (val Dice %.4f)", model_path, self.publish_path, result.best_val_dice)
        return self.publish_path


class SlicerProgress(TrainingCallback):
    """Writes the ``train_stats`` Slicer reads: ``epoch``, ``total_epochs``, ``best_metric``, times, stage."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.start_time = time.time()

    def start(self, plan: TrainingPlan, previous: dict[str, Any]) -> None:
        """Epoch 0 of the plan, with the current model's accuracy (``previous`` stats) until an epoch ends."""
        self.start_time = time.time()
        stats = {
            "epoch": 0,
            "total_epochs": plan.config.planned_epochs,
            "best_metric": previous.get("best_metric", 0.0),
            "start_ts": int(self.start_time),
            "current_time": _hms(0),
            "stage": plan.config.run_stages[0],
            "stage_epoch": 0,
        }
        if plan.expected_seconds is not None:
            stats["expected_duration"] = format_duration(plan.expected_seconds)
        self._write(stats)

    def _write(self, stats: dict[str, Any]) -> None:
        atomic_write_bytes(self.path, lambda f: f.write(json.dumps(stats, indent=2).encode()))

    def on_epoch_end(self, summary: EpochSummary) -> None:
        self._write(
            {
                "epoch": summary.global_epoch,
                "total_epochs": summary.total_epochs,
                "best_metric": summary.best_val_dice,
                "start_ts": int(self.start_time),
                "current_time": _hms(summary.elapsed_seconds),
                "stage": summary.stage,
                "stage_name": summary.stage_name,
                "stage_epoch": summary.epoch,
                "stage_epochs": summary.epochs,
                "train_loss": summary.train_loss,
                "val_loss": summary.val_loss,
                "val_dice": summary.val_dice,
                "lr": summary.lr,
            }
        )

    def finish(self, result: Any) -> None:
        stats = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                stats = json.load(f)
        stats.update({"total_time": _hms(time.time() - self.start_time), "best_metric": result.best_val_dice})
        stats.pop("current_time", None)
        self._write(stats)


class PseudoLabelsToDatastore(TrainingCallback):
    """Stores accepted stage-3 pseudo-labels as the images' ``pseudo`` labels (never touching ``final`` ones)."""

    def __init__(self, datastore: Datastore) -> None:
        self.datastore = datastore

    def on_pseudo_labels(self, records: list) -> None:
        ids = {os.path.realpath(self.datastore.get_image_uri(i)): i for i in self.datastore.get_unlabeled_images()}
        saved = 0
        for record in records:
            image_id = ids.get(os.path.realpath(record.image))
            if record.accepted and image_id:
                info = {"confident_fraction": record.confident_fraction, "foreground_pixels": record.foreground_pixels}
                try:
                    self.datastore.save_label(image_id, record.label, PSEUDO_TAG, info)
                except HTTPException as e:  # refused like any label (e.g. foreground on a blank image): skip it
                    logger.warning("pseudo-label of %s not stored: %s", image_id, e.detail)
                    continue
                saved += 1
        logger.info("saved %d of %d pseudo-labels in the datastore (tag %r)", saved, len(records), PSEUDO_TAG)


def parse_ints(value: Any) -> tuple[int, ...]:
    """A Train option of whole numbers (``"1,2,3"``, ``"1, 2"`` or ``2``) as a tuple."""
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in str(value).replace(" ", "").split(",") if v)


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
