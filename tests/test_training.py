"""The three-stage trainer on tiny real runs (64x64 inputs, the bundled sample data, one or two epochs per stage)."""

from __future__ import annotations

import csv
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from sscase_monai import io
from sscase_monai.inference import Predictor
from sscase_monai.model_files import ModelSpec, read_sidecar, save_model
from sscase_monai.report import read_history
from sscase_monai.training import (
    DEFAULT_STAGES,
    HISTORY_COLUMNS,
    EarlyStopping,
    PseudoLabelConfig,
    SemiSupervisedTrainer,
    StageConfig,
    StagePlan,
    TrainingCallback,
    TrainingConfig,
    checkpoint_path,
    load_checkpoint,
    plateau_scheduler,
)
from sscase_monai.training.checkpoints import cpu_state_dict, rng_states, set_rng_states
from sscase_monai.training.epoch_loop import EpochLoop, ValidationResult
from sscase_monai.training.loaders import build_train_loader, preprocess_items

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO_ROOT / "sample-data"
SIZE = 64
PERMISSIVE = PseudoLabelConfig(confidence=0.5, min_confident_fraction=0.0, min_foreground_pixels=0)


# ----------------------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, list[dict[str, str]]]:
    """The sample data's 8 labelled images (6 train, 2 validation) and 4 unlabelled ones (one a PNG)."""
    root = tmp_path_factory.mktemp("data")
    labelled = []
    for label in sorted((SAMPLE_DATA / "labels" / "final").iterdir()):
        stem = io.image_stem(label)
        (image,) = [p for p in SAMPLE_DATA.iterdir() if p.is_file() and io.image_stem(p) == stem]
        labelled.append({"image": str(shutil.copy(image, root)), "label": str(label)})
    labelled_stems = {io.image_stem(item["image"]) for item in labelled}
    unlabelled = [p for p in sorted(SAMPLE_DATA.glob("case_*")) if io.image_stem(p) not in labelled_stems]
    chosen = [p for p in unlabelled if p.suffix == ".png"][:1] + [p for p in unlabelled if p.suffix != ".png"][:3]
    return {
        "train": labelled[:6],
        "val": labelled[6:],
        "unlabeled": [{"image": str(shutil.copy(p, root))} for p in chosen],
    }


@pytest.fixture(scope="module")
def init_model(tmp_path_factory) -> Path:
    """A fresh network (ImageNet encoder) saved as a model file: runs starting from it start from known weights."""
    torch.manual_seed(0)
    spec = ModelSpec(input_size=SIZE)
    return save_model(tmp_path_factory.mktemp("init") / "init.pt", spec.build_network(pretrained=True), spec)


def tiny_config(init: Path | None = None, **kwargs) -> TrainingConfig:
    epochs = kwargs.pop("epochs", (1, 1, 1))
    values = {
        "spec": ModelSpec(input_size=SIZE),
        "init_weights": str(init) if init else None,
        "samples_per_image": 1,
        "batch_size": 4,
        "progress": False,
        "tensorboard": False,
        "pseudo_labels": PERMISSIVE,
    } | kwargs
    return TrainingConfig(**values).with_stage_settings(epochs=epochs)


class Recorder(TrainingCallback):
    """Records every event; optionally stops after, or raises at, a given (stage, epoch)."""

    def __init__(self, stop_after: tuple[int, int] | None = None, raise_at: tuple[int, int] | None = None) -> None:
        self.events: list[tuple] = []
        self.summaries = []
        self.stop_after = stop_after
        self.raise_at = raise_at
        self.stop = False

    def on_train_start(self, plan):
        self.events.append(("train_start", plan.stages, plan.total_epochs))

    def on_stage_start(self, stage, name, epochs):
        self.events.append(("stage_start", stage))

    def on_epoch_end(self, summary):
        self.events.append(("epoch_end", summary.stage, summary.epoch))
        self.summaries.append(summary)
        if (summary.stage, summary.epoch) == self.raise_at:
            raise RuntimeError("callback failure")
        if (summary.stage, summary.epoch) == self.stop_after:
            self.stop = True

    def on_stage_end(self, stage, result):
        self.events.append(("stage_end", stage, result.best_epoch))

    def on_pseudo_labels(self, records):
        self.events.append(("pseudo_labels", len(records)))

    def on_train_end(self, result):
        self.events.append(("train_end", result.stopped))

    def should_stop(self) -> bool:
        return self.stop


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def history_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def full_run(data, init_model, tmp_path_factory):
    """Stages 1, 2, 3 for one epoch each, permissive pseudo-label thresholds, TensorBoard on."""
    out = tmp_path_factory.mktemp("full")
    recorder = Recorder()
    config = tiny_config(init_model, tensorboard=True)
    trainer = SemiSupervisedTrainer(config, data["train"], data["val"], data["unlabeled"], out, callbacks=[recorder])
    result = trainer.run()
    return result, recorder, out


# ----------------------------------------------------------------------------------------------------------------
# Units: settings, schedules, Dice, random states
# ----------------------------------------------------------------------------------------------------------------


def test_defaults_are_the_method_table():
    config = TrainingConfig()
    assert [(s.epochs, s.lr, s.patience, s.lr_patience, s.min_lr, s.lr_factor) for s in config.stages] == [
        (20, 1e-4, 7, 2, 1e-7, 0.5),
        (50, 1e-5, 15, 3, 1e-8, 0.5),
        (30, 5e-6, 20, 5, 1e-9, 0.5),
    ]
    assert config.run_stages == (1, 2, 3) and config.batch_size == 8 and config.samples_per_image == 32
    assert config.spec.input_size == 256 and config.consistency_weight == 0.0 and config.device == "auto"
    assert config.pseudo_labels == PseudoLabelConfig(0.5, 0.95, 0.9, 10, False)
    assert config.planned_epochs == 100


def test_config_stage_settings_round_trip_and_errors():
    config = TrainingConfig(run_stages=(1, 2)).with_stage_settings(epochs=(3, 4), lr=(1e-3,), patience=(1, 2, 3))
    assert [s.epochs for s in config.stages] == [3, 4, 30]
    assert [s.lr for s in config.stages] == [1e-3] * 3
    assert [s.patience for s in config.stages] == [1, 2, 3]
    assert TrainingConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="epochs needs 1 value, 3"):
        config.with_stage_settings(epochs=(1, 2, 3, 4))
    for bad, match in (
        ({"run_stages": (2, 1)}, "ascending"),
        ({"run_stages": (4,)}, "subset of"),
        ({"batch_size": 0}, "batch_size"),
        ({"device": "gpu"}, "device"),
        ({"consistency_weight": -1.0}, "consistency_weight"),
        ({"cutout_prob": 1.5}, "cutout_prob must be within \\[0, 1\\], got 1.5"),
    ):
        with pytest.raises(ValueError, match=match):
            TrainingConfig(**bad)
    with pytest.raises(ValueError, match="lr must be > 0"):
        StageConfig(epochs=1, lr=0.0, patience=1, lr_patience=1, min_lr=0.0)


def test_early_stopping_keras_semantics():
    stopper = EarlyStopping(patience=2)
    decisions = []
    for epoch, loss in enumerate([1.0, 0.8, 0.9, float("nan"), 0.7], start=1):
        decisions.append((stopper.step(loss, epoch), stopper.should_stop))
        if stopper.should_stop:
            break
    # epoch 3 and 4 (NaN) do not improve: with patience 2 the stage ends after epoch 4, best epoch 2
    assert decisions == [(True, False), (True, False), (False, False), (False, True)]
    assert (stopper.best, stopper.best_epoch) == (0.8, 2)
    restored = EarlyStopping(patience=2)
    restored.load_state_dict(stopper.state_dict())
    assert restored.state_dict() == stopper.state_dict()
    zero = EarlyStopping(patience=0)
    assert zero.step(1.0, 1) and not zero.should_stop
    assert not zero.step(1.0, 2) and zero.should_stop


def test_plateau_scheduler_halves_like_keras_and_respects_min_lr():
    settings = StageConfig(epochs=10, lr=1e-4, patience=7, lr_patience=2, min_lr=3e-5)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=settings.lr)
    scheduler = plateau_scheduler(optimizer, settings)
    lrs = []
    for loss in [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5]:
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step(loss)
    # Keras: 2 epochs without improvement -> x0.5 (after epoch 3 and again after epoch 5), floored at min_lr;
    # the improvement at epoch 6 resets the count
    assert lrs == pytest.approx([1e-4, 1e-4, 1e-4, 5e-5, 5e-5, 3e-5, 3e-5, 3e-5])


def test_rng_states_round_trip():
    saved = rng_states()
    first = (np.random.rand(), torch.rand(1).item(), __import__("random").random())
    set_rng_states(saved)
    assert (np.random.rand(), torch.rand(1).item(), __import__("random").random()) == first


# ----------------------------------------------------------------------------------------------------------------
# A full run: stages, files, callbacks
# ----------------------------------------------------------------------------------------------------------------


def test_full_run_outputs_and_callback_order(full_run):
    result, recorder, out = full_run
    assert not result.stopped and result.model_path == out / "model.pt"
    for name in ("model.pt", "model.json", "stage1_best.pt", "stage2_best.pt", "stage3_best.pt", "metrics.json"):
        assert (out / name).is_file(), name
    assert recorder.events == [
        ("train_start", (1, 2, 3), 3),
        ("stage_start", 1),
        ("epoch_end", 1, 1),
        ("stage_end", 1, 1),
        ("stage_start", 2),
        ("epoch_end", 2, 1),
        ("stage_end", 2, 1),
        ("pseudo_labels", 4),
        ("stage_start", 3),
        ("epoch_end", 3, 1),
        ("stage_end", 3, 1),
        ("train_end", False),
    ]
    last = recorder.summaries[-1]
    assert (last.global_epoch, last.total_epochs, last.stage_name) == (3, 3, "pseudo-label retrain")
    assert last.best_val_dice == max(s.val_dice for s in recorder.summaries)
    assert last.images_per_second > 0 and last.elapsed_seconds >= last.seconds > 0


def test_history_csv_tensorboard_and_checkpoint(full_run):
    result, _, out = full_run
    rows = history_rows(out / "history.csv")
    assert list(rows[0]) == list(HISTORY_COLUMNS)
    assert [(r["stage"], r["epoch"], r["global_epoch"]) for r in rows] == [
        ("1", "1", "1"),
        ("2", "1", "2"),
        ("3", "1", "3"),
    ]
    assert [float(r["lr"]) for r in rows] == [s.lr for s in DEFAULT_STAGES]
    assert set(read_history(out / "history.csv")) == {"1", "2", "3"}  # what the report's learning curves read
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    state = load_checkpoint(checkpoint_path(out))  # weights_only=True inside
    assert (state["stage"], state["stage_complete"]) == (3, True)
    assert sorted(state["completed_stages"]) == [1, 2, 3] and len(state["history"]) == 3


def test_stage1_trains_only_the_decoder_and_stage2_the_encoder_too(full_run, init_model):
    _, _, out = full_run
    start, stage1, stage2 = weights(init_model), weights(out / "stage1_best.pt"), weights(out / "stage2_best.pt")
    encoder = [k for k in start if k.startswith("encoder.")]
    decoder = [k for k in start if not k.startswith("encoder.")]
    assert any("running_mean" in k for k in encoder) and any("num_batches_tracked" in k for k in encoder)
    assert all(torch.equal(start[k], stage1[k]) for k in encoder), "stage 1 changed the encoder (weights or BN stats)"
    assert sum(not torch.equal(start[k], stage1[k]) for k in decoder) > len(decoder) // 2
    changed = [k for k in encoder if not torch.equal(stage1[k], stage2[k])]
    assert any(k.endswith("conv.weight") or "_conv" in k for k in changed)
    assert any("running_mean" in k for k in changed)


def test_pseudo_labels_are_written_on_each_images_grid(full_run, data):
    result, _, out = full_run
    with (out / "pseudo_labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["image", "label", "confident_fraction", "foreground_pixels", "accepted"]
    assert [r["image"] for r in rows] == [item["image"] for item in data["unlabeled"]]
    assert all(r["accepted"] == "True" for r in rows)
    for row in rows:
        label, image = Path(row["label"]), Path(row["image"])
        assert label.parent == out / "pseudo_labels" and io.image_stem(label) == io.image_stem(image)
        assert io.image_extension(label) == io.image_extension(image)  # PNG stays PNG, NIfTI stays NIfTI
        mask, geometry = io.read_image(label)
        assert geometry == io.read_image(image)[1]
        assert int((mask > 0).sum()) == int(row["foreground_pixels"])
    assert result.stages[3].train_images == len(data["train"]) + len(rows)
    assert [r.accepted for r in result.pseudo_labels] == [True] * 4


def test_model_file_loads_plainly_and_predicts(full_run, data):
    result, _, out = full_run
    state = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert_same_weights(state, weights(out / "stage3_best.pt"))
    sidecar = read_sidecar(out / "model.pt")
    training = sidecar["training"]
    assert training["stage"] == 3 and training["config"]["run_stages"] == [1, 2, 3]
    assert set(training["validation_metrics"]["mean"]) >= {"dice", "jaccard", "hd95"}
    image = data["val"][0]["image"]
    prediction = Predictor.from_file(out / "model.pt", device="cpu").predict(image)
    assert prediction.mask.shape == io.read_image(image)[0].shape[:2]
    table = result.metrics_table()
    assert table.count("per-image mean") == 3 and table.count("pooled") == 3
    assert result.final_metrics["num_images"] == len(data["val"])


# ----------------------------------------------------------------------------------------------------------------
# Stage 3 alone, early stopping, consistency, multi-class
# ----------------------------------------------------------------------------------------------------------------


def test_stage3_alone_with_nothing_accepted_still_trains(data, init_model, tmp_path):
    config = tiny_config(init_model, run_stages=(3,), pseudo_labels=PseudoLabelConfig(min_foreground_pixels=10**9))
    result = SemiSupervisedTrainer(config, data["train"], data["val"], data["unlabeled"], tmp_path).run()
    assert sorted(result.stages) == [3] and result.model_path.is_file()
    assert result.stages[3].train_images == len(data["train"])
    assert not any(r.accepted for r in result.pseudo_labels) and len(result.pseudo_labels) == 4
    assert not [p for p in (tmp_path / "pseudo_labels").iterdir()]
    with (tmp_path / "pseudo_labels.csv").open() as f:
        assert {row["accepted"] for row in csv.DictReader(f)} == {"False"}


class ScriptedValidation:
    """Validation losses from a script (in place of ``EpochLoop.validate``), and the weights each epoch ends with."""

    def __init__(self, losses):
        self.losses = list(losses)
        self.snapshots = []

    def validate(self, model, batches):
        self.snapshots.append(cpu_state_dict(model))
        return ValidationResult(loss=self.losses[len(self.snapshots) - 1], dice=0.5)


def test_early_stopping_restores_the_best_epoch_and_halves_the_lr(data, init_model, tmp_path, monkeypatch):
    stage = StageConfig(epochs=10, lr=1e-4, patience=2, lr_patience=1, min_lr=1e-7)
    config = tiny_config(init_model, run_stages=(2,), epochs=None)
    config = TrainingConfig.from_dict(config.to_dict() | {"stages": [DEFAULT_STAGES[0], stage, DEFAULT_STAGES[2]]})
    scripted = ScriptedValidation(losses=[0.5, 0.3, 0.4, 0.6, 0.1])
    monkeypatch.setattr(EpochLoop, "validate", lambda loop, model, batches: scripted.validate(model, batches))
    trainer = SemiSupervisedTrainer(config, data["train"], data["val"], out_dir=tmp_path)
    result = trainer.run()
    stage2 = result.stages[2]
    assert (stage2.epochs_run, stage2.best_epoch, stage2.early_stopped) == (4, 2, True)
    assert stage2.best_val_loss == 0.3
    assert_same_weights(weights(result.model_path), scripted.snapshots[1])
    assert [row["lr"] for row in result.history] == pytest.approx([1e-4, 1e-4, 1e-4, 5e-5])


def test_consistency_term_with_unlabelled_images(data, init_model, tmp_path):
    config = tiny_config(init_model, run_stages=(1,), consistency_weight=1.0)
    result = SemiSupervisedTrainer(config, data["train"], data["val"], data["unlabeled"], tmp_path).run()
    (row,) = result.history
    assert 0 < row["consistency_loss"] < row["train_loss"] and math.isfinite(row["val_loss"])


def test_multiclass_softmax_with_consistency(tmp_path):
    rng = np.random.default_rng(0)
    items, unlabeled = [], []
    for i in range(5):
        image = rng.integers(0, 255, (40, 56), dtype=np.uint8)
        label = np.zeros((40, 56), np.uint8)
        label[5:15, 5:20], label[20:35, 25:50] = 1, 2
        sitk.WriteImage(sitk.GetImageFromArray(image), str(tmp_path / f"img{i}.png"))
        sitk.WriteImage(sitk.GetImageFromArray(label), str(tmp_path / f"img{i}_label.png"))
        sitk.WriteImage(sitk.GetImageFromArray(image[::-1]), str(tmp_path / f"unlabelled{i}.png"))
        items.append({"image": str(tmp_path / f"img{i}.png"), "label": str(tmp_path / f"img{i}_label.png")})
        unlabeled.append({"image": str(tmp_path / f"unlabelled{i}.png")})
    spec = ModelSpec.for_labels({"pubic_symphysis": 1, "head": 2}, input_size=SIZE)
    config = tiny_config(spec=spec, pretrained=False, run_stages=(1, 2), consistency_weight=0.5)
    result = SemiSupervisedTrainer(config, items[:4], items[4:], unlabeled[:2], tmp_path / "out").run()
    assert result.model_path.is_file() and set(result.final_metrics["per_class"]) == {"1", "2"}
    assert all(row["consistency_loss"] > 0 for row in result.history)


def test_bad_unlabelled_image_is_named_before_training(data, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    config = tiny_config(run_stages=(1, 2, 3))
    trainer = SemiSupervisedTrainer(config, data["train"], data["val"], [{"image": str(bad)}], tmp_path / "out")
    with pytest.raises(ValueError, match="broken.png"):
        trainer.run()
    assert not (tmp_path / "out" / "checkpoints").exists()
    with pytest.raises(ValueError, match="no labelled validation images"):
        SemiSupervisedTrainer(config, data["train"], [], [], tmp_path / "out")


# ----------------------------------------------------------------------------------------------------------------
# Determinism, interruption, resume
# ----------------------------------------------------------------------------------------------------------------


def test_same_seed_same_weights(data, init_model, tmp_path):
    runs = []
    for name in ("a", "b"):
        config = tiny_config(init_model, run_stages=(2,), samples_per_image=2)
        runs.append(SemiSupervisedTrainer(config, data["train"], data["val"], out_dir=tmp_path / name).run())
    assert_same_weights(weights(runs[0].model_path), weights(runs[1].model_path))
    other = tiny_config(init_model, run_stages=(2,), samples_per_image=2, seed=1)
    changed = SemiSupervisedTrainer(other, data["train"], data["val"], out_dir=tmp_path / "d").run()
    assert not torch.equal(*(weights(r.model_path)["head.output.weight"] for r in (runs[0], changed)))


def test_augmented_batches_do_not_depend_on_the_worker_count(data):
    """Per-item seeding: workers draw the same augmentations; interpolation in a 1-thread worker may differ from
    the multi-threaded main process by a float rounding step, never more."""
    cache = preprocess_items(data["train"], ModelSpec(input_size=SIZE))
    epochs = []
    for workers in (0, 2):
        loader, dataset, sampler = build_train_loader(cache, 2, 4, seed=0, num_workers=workers)
        dataset.set_epoch(1)
        sampler.set_epoch(1)
        epochs.append(list(loader))
    assert len(epochs[0]) == len(epochs[1]) > 0
    for a, b in zip(*epochs, strict=True):
        torch.testing.assert_close(a["image"], b["image"], rtol=0, atol=1e-6)
        assert torch.equal(a["label"], b["label"])


def test_stop_then_resume_matches_an_uninterrupted_run(data, init_model, tmp_path):
    config = tiny_config(init_model, run_stages=(1, 2), epochs=(2, 2))
    straight = SemiSupervisedTrainer(config, data["train"], data["val"], out_dir=tmp_path / "straight").run()

    out = tmp_path / "interrupted"
    stopper = Recorder(stop_after=(2, 1))
    stopped = SemiSupervisedTrainer(config, data["train"], data["val"], out_dir=out, callbacks=[stopper]).run()
    assert stopped.stopped and stopped.model_path is None and sorted(stopped.stages) == [1]
    assert stopped.best_model_path == out / "stage1_best.pt"
    assert stopper.events[-1] == ("train_end", True) and not (out / "model.pt").exists()
    assert len(history_rows(out / "history.csv")) == 3

    again = Recorder()
    resumed_config = TrainingConfig.from_dict(config.to_dict() | {"resume": True})
    resumed = SemiSupervisedTrainer(resumed_config, data["train"], data["val"], out_dir=out, callbacks=[again]).run()
    assert [e for e in again.events if e[0] == "epoch_end"] == [("epoch_end", 2, 2)]
    rows = history_rows(out / "history.csv")
    assert [(r["stage"], r["epoch"]) for r in rows] == [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")]
    assert sorted(resumed.stages) == [1, 2] and len(resumed.history) == 4
    assert_same_weights(weights(resumed.model_path), weights(straight.model_path))


def test_stage_planner_replans_stage3_after_pseudo_labelling_and_a_resumed_stage_keeps_its_plan(
    data, init_model, tmp_path
):
    calls = []

    def planner(stage: int, images: int) -> StagePlan:
        calls.append((stage, images))
        return StagePlan(epochs={2: 2, 3: 3}[stage], samples_per_image={2: 1, 3: 2}[stage])

    config = tiny_config(init_model, run_stages=(2, 3), epochs=(1, 1))
    recorder = Recorder(stop_after=(3, 1))
    trainer = SemiSupervisedTrainer(
        config, data["train"], data["val"], data["unlabeled"], tmp_path, callbacks=[recorder], stage_planner=planner
    )
    stopped = trainer.run()
    accepted = sum(r.accepted for r in stopped.pseudo_labels)
    assert accepted == len(data["unlabeled"])  # the permissive rule takes every unlabelled image
    assert calls == [(2, len(data["train"])), (3, len(data["train"]) + accepted)]
    assert [(s.stage, s.epoch, s.epochs, s.total_epochs) for s in recorder.summaries] == [
        (2, 1, 2, 3),
        (2, 2, 2, 3),
        (3, 1, 3, 5),
    ]
    assert trainer.plans[3] == StagePlan(3, 2)

    def no_replanning(stage: int, images: int) -> StagePlan:
        raise AssertionError(f"stage {stage} was re-planned on resume")

    again = Recorder()
    resumed_config = TrainingConfig.from_dict(config.to_dict() | {"resume": True})
    resumed = SemiSupervisedTrainer(
        resumed_config, data["train"], data["val"], data["unlabeled"], tmp_path, [again], no_replanning
    ).run()
    assert [e[1:] for e in again.events if e[0] == "epoch_end"] == [(3, 2), (3, 3)]
    assert resumed.stages[3].epochs_run == 3 and resumed.stages[3].train_images == len(data["train"]) + accepted


def test_failing_callback_leaves_a_resumable_checkpoint(data, init_model, tmp_path):
    config = tiny_config(init_model, run_stages=(1,), epochs=(3,))
    with pytest.raises(RuntimeError, match="callback failure"):
        SemiSupervisedTrainer(
            config, data["train"], data["val"], out_dir=tmp_path, callbacks=[Recorder(raise_at=(1, 1))]
        ).run()
    assert load_checkpoint(checkpoint_path(tmp_path))["epoch"] == 1
    recorder = Recorder()
    resumed = TrainingConfig.from_dict(config.to_dict() | {"resume": True})
    SemiSupervisedTrainer(resumed, data["train"], data["val"], out_dir=tmp_path, callbacks=[recorder]).run()
    assert [e[1:] for e in recorder.events if e[0] == "epoch_end"] == [(1, 2), (1, 3)]
    assert [r["epoch"] for r in history_rows(tmp_path / "history.csv")] == ["1", "2", "3"]


def test_resume_refuses_a_checkpoint_of_another_model(data, init_model, tmp_path):
    SemiSupervisedTrainer(tiny_config(init_model, run_stages=(1,)), data["train"], data["val"], out_dir=tmp_path).run()
    other = tiny_config(run_stages=(1,), resume=True, spec=ModelSpec(input_size=96), pretrained=False)
    with pytest.raises(ValueError, match="checkpoint of another model"):
        SemiSupervisedTrainer(other, data["train"], data["val"], out_dir=tmp_path).run()


def test_sigkill_mid_run_then_resume(data, tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    for item in data["train"] + data["val"]:
        shutil.copy(item["image"], images)
        shutil.copy(item["label"], labels)
    out = tmp_path / "out"
    args = ["--images", str(images), "--labels", str(labels), "--out", str(out), "--input-size", str(SIZE)]
    args += ["--samples-per-image", "1", "--batch-size", "4", "--stages", "1", "--no-progress", "--no-tensorboard"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "sscase_monai", "train", *args, "--epochs", "500", "--patience", "500"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            history = out / "history.csv"
            if history.is_file() and len(history_rows(history)) >= 2:
                break
            time.sleep(0.2)
        assert process.poll() is None, "the training process ended before it could be killed"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    done = int(load_checkpoint(checkpoint_path(out))["epoch"])
    assert done >= 2
    from sscase_monai.cli import main

    assert main(["train", *args, "--epochs", str(done + 1), "--resume"]) == 0
    assert [int(r["epoch"]) for r in history_rows(out / "history.csv")] == list(range(1, done + 2))
    assert (out / "model.pt").is_file()


def test_cache_and_loader_shapes_sharding_and_epochs(data):
    cache = preprocess_items(data["train"][:3], ModelSpec(input_size=SIZE))
    assert cache[0]["image"].shape == (3, SIZE, SIZE) and cache[0]["image"].dtype == torch.float32
    assert cache[0]["label"].shape == (1, SIZE, SIZE) and cache[0]["label"].dtype == torch.uint8
    loader, dataset, sampler = build_train_loader(cache, samples_per_image=3, batch_size=4, seed=0)
    assert [b["image"].shape[0] for b in loader] == [4, 4]  # 9 samples: the lone ninth is dropped
    first = next(iter(loader))["image"]
    dataset.set_epoch(1), sampler.set_epoch(1)
    assert not torch.equal(first, next(iter(loader))["image"])
    dataset.set_epoch(0), sampler.set_epoch(0)
    assert torch.equal(first, next(iter(loader))["image"])
    shards = [set(build_train_loader(cache, 2, 2, 0, world_size=2, rank=r)[2]) for r in (0, 1)]
    assert shards[0] | shards[1] == set(range(6)) and not shards[0] & shards[1]


def _distributed_worker(rank: int, port: int, out: str) -> None:
    """One of two Gloo processes exercising the DDP helpers (module level: spawn pickles it by name)."""
    os.environ.update(
        {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1"}
        | {"MASTER_PORT": str(port)}
    )
    from sscase_monai.training import distributed as D

    context = D.setup_distributed("cpu")
    results = {"world": (context.world_size, context.rank, context.owns_process_group)}
    results["any"] = (D.any_process(rank == 1, context), D.any_process(False, context))
    results["sum"] = D.all_reduce_sum(torch.tensor([rank + 1.0, 10.0]), context).tolist()
    results["object"] = D.broadcast_object({"from": rank}, context)
    norm = torch.nn.BatchNorm1d(2)
    norm.running_mean.fill_(float(rank))
    D.broadcast_buffers(norm, context)
    results["buffer"] = norm.running_mean.tolist()

    def fails():
        raise ValueError("bad file x.png")

    try:
        D.run_on_main(fails, context)
    except (ValueError, RuntimeError) as e:
        results["error"] = f"{type(e).__name__}: {e}"
    results["main"] = D.run_on_main(lambda: rank + 41, context)
    D.cleanup_distributed(context)
    torch.save(results, Path(out) / f"rank{rank}.pt")


def test_distributed_helpers_with_two_gloo_processes(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_distributed_worker, args=(port, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for rank, results in enumerate(ranks):
        assert results["world"] == (2, rank, True)
        assert results["any"] == (True, False)  # both processes agree that one asked to stop
        assert results["sum"] == [3.0, 20.0]
        assert results["object"] == {"from": 0} and results["buffer"] == [0.0, 0.0] and results["main"] == 41
    assert ranks[0]["error"] == "ValueError: bad file x.png"
    assert ranks[1]["error"] == "RuntimeError: the main process failed: ValueError: bad file x.png"
