"""Accuracy on real fetal ultrasound (HC18 head segmentation) under a fixed CPU budget (issue #4).

Configurations (``--only NAME``; all of them by default, one after the other):

- ``sscase_unet_196``: SS_CASE_UNet, ImageNet-pretrained EfficientNet-Lite0 encoder (bundled weights), all 196
  labelled training images, stages 1, 2, 3 (stage 3 with the 335 unlabelled images as pseudo-label pool);
- ``sscase_unet_25``: the same with 25 labelled images (a seeded subset of whole exams) + the unlabelled pool;
- ``basic_unet_196``: MONAI ``BasicUNet`` (2-D, 3 input channels), from scratch, 196 labels, stage 2 only;
- ``basic_unet_25``: the same BasicUNet on the 25-image subset (the baseline of ``sscase_unet_25``);
- ``flexible_unet_196``: MONAI ``FlexibleUNet`` (efficientnet-b0 backbone, not pretrained, batch-norm momentum 0.1),
  from scratch, 196 labels, stage 2 only.

Every configuration trains through the project's ``SemiSupervisedTrainer`` (baselines via
``ModelSpec.architecture``) and gets the same budget: ``--minutes`` of training (training epochs plus their
per-epoch validation), split over the stages it runs (SS_CASE_UNet: 20/50/30 % for stages 1/2/3, the paper's epoch
ratio). Before a run the script measures training and validation images/s of each network on a few HC18 images
(same augmentation, channels-last, Adam step as the trainer) and turns the budget into epochs x samples per image
(~800 samples per epoch). Stage 3's training set size is known only after pseudo-labelling: the trainer re-plans
stage 3 when it starts (``SemiSupervisedTrainer(stage_planner=...)``), so all stages run in one trainer. The
throughput is measured with the trainer's own epoch loop (``training.EpochLoop``) on a few HC18 images.

Each stage's best model (``stage{n}_best.pt``) is scored with ``evaluation.evaluate_model`` on the 87 validation
images, on each image's original grid, HD95 in mm from ``val/pixel_size_and_hc.csv`` (no test-time augmentation).
Results go to ``OUT/<name>/result.json``; the section "Accuracy on HC18 (issue #4)" of ``bench/RESULTS.md`` is
regenerated from every ``result.json`` in ``OUT`` (text after its end marker is kept).

Examples (from the repository root)::

    .venv/bin/python bench/hc18_accuracy.py --quick                      # smoke test, ~2-3 minutes
    .venv/bin/python bench/hc18_accuracy.py --data /work/shared/data/hc18 --minutes 18 --input-size 128
    .venv/bin/python bench/hc18_accuracy.py --only basic_unet_196 --epochs 18 --samples-per-image 4
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from common import RESULTS_FILE, load_average, machine, setup_logging, write_section  # noqa: E402  (bench/common.py)
from torch.optim import Adam  # noqa: E402

from sscase_monai.cli.train import float_list, int_list  # noqa: E402
from sscase_monai.data import pair_images_with_labels, split_by_exam  # noqa: E402
from sscase_monai.evaluation import evaluate_model, find_pixel_size_csv, read_pixel_size_csv  # noqa: E402
from sscase_monai.inference import Predictor  # noqa: E402
from sscase_monai.method import BATCH_SIZE, SAMPLES_PER_IMAGE, stage_values  # noqa: E402
from sscase_monai.metrics import format_metrics_table  # noqa: E402
from sscase_monai.model_files import ModelSpec  # noqa: E402
from sscase_monai.training import (  # noqa: E402
    STAGE_NAMES,
    EpochSummary,
    PseudoLabelConfig,
    SemiSupervisedTrainer,
    StagePlan,
    TrainingCallback,
    TrainingConfig,
)
from sscase_monai.training.distributed import DistributedContext  # noqa: E402
from sscase_monai.training.epoch_loop import EpochLoop  # noqa: E402
from sscase_monai.training.loaders import batches, build_train_loader, preprocess_items  # noqa: E402
from sscase_monai.training.stage_loop import stage_parameters  # noqa: E402

logger = logging.getLogger("hc18_accuracy")

SECTION_TITLE = "Accuracy on HC18 (issue #4)"
EPOCH_SAMPLES = 800
"""Target training samples per epoch (samples per image = round(800 / training images))."""
SSCASE_STAGE_SHARE = {1: 0.2, 2: 0.5, 3: 0.3}
"""Share of the budget per SS_CASE_UNet stage (the paper's 20/50/30 epochs)."""
SUBSET_SIZE = 25
SEED = 0
BOOTSTRAP = 2000


@dataclass(frozen=True)
class Configuration:
    """One row of the benchmark."""

    name: str
    title: str
    architecture: str
    encoder: str
    pretrained: bool
    labels: int | None  # None: every training image
    stages: tuple[int, ...]
    lr: tuple[float, ...]  # one per stage in ``stages``


CONFIGURATIONS: dict[str, Configuration] = {
    c.name: c
    for c in (
        Configuration(
            "sscase_unet_196",
            "SS_CASE_UNet (lite0 ImageNet), 196 labels + unlabelled",
            "sscase_unet",
            "efficientnet-lite0",
            True,
            None,
            (1, 2, 3),
            (1e-3, 1e-4, 5e-5),
        ),
        Configuration(
            "sscase_unet_25",
            "SS_CASE_UNet (lite0 ImageNet), 25 labels + unlabelled",
            "sscase_unet",
            "efficientnet-lite0",
            True,
            SUBSET_SIZE,
            (1, 2, 3),
            (1e-3, 1e-4, 5e-5),
        ),
        Configuration(
            "basic_unet_196",
            "MONAI BasicUNet (scratch), 196 labels",
            "basic_unet",
            "efficientnet-b0",
            False,
            None,
            (2,),
            (3e-3,),
        ),
        Configuration(
            "basic_unet_25",
            "MONAI BasicUNet (scratch), 25 labels",
            "basic_unet",
            "efficientnet-b0",
            False,
            SUBSET_SIZE,
            (2,),
            (3e-3,),
        ),
        Configuration(
            "flexible_unet_196",
            "MONAI FlexibleUNet b0 (scratch, BN momentum 0.1), 196 labels",
            "flexible_unet",
            "efficientnet-b0",
            False,
            None,
            (2,),
            (1e-3,),
        ),
    )
}


# ----------------------------------------------------------------------------------------------------------------
# Arguments, machine, data
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "hc18", help="HC18 folder")
    parser.add_argument("--minutes", type=float, help="training budget per configuration (18; --quick: 0.2)")
    parser.add_argument("--input-size", type=int, default=128, help="network input side, multiple of 32 (128)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="images per step (%(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (bench/out/hc18; --quick: ...-quick)")
    parser.add_argument("--only", action="append", choices=sorted(CONFIGURATIONS), help="run this configuration")
    parser.add_argument("--quick", action="store_true", help="smoke test: 8/6/8 images, 64 px, 16-sample epochs")
    parser.add_argument("--epochs", type=int_list, help="with one --only: epochs per stage run (skips the calibration)")
    parser.add_argument(
        "--samples-per-image", type=int_list, help="with --epochs: samples per image (stages 1-2[,3]; default from 800)"
    )
    parser.add_argument("--lr", type=float_list, help="with one --only: learning rate per stage run")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    parser.add_argument("--results", type=Path, help="Markdown file to update (bench/RESULTS.md; --quick: OUT/...)")
    parser.add_argument("--no-results", action="store_true", help="do not write a results file")
    parser.add_argument("--report-only", action="store_true", help="only regenerate the results section from OUT")
    args = parser.parse_args(argv)
    args.data = args.data.resolve()
    if (args.epochs or args.lr or args.samples_per_image) and len(args.only or []) != 1:
        parser.error("--epochs, --samples-per-image and --lr need exactly one --only")
    if args.samples_per_image and not args.epochs:
        parser.error("--samples-per-image needs --epochs")
    if args.out is None:
        args.out = Path("bench/out/hc18-quick" if args.quick else "bench/out/hc18")
    if args.results is None:
        args.results = args.out / "RESULTS.md" if args.quick else RESULTS_FILE
    if args.minutes is None:
        args.minutes = 0.2 if args.quick else 18.0
    if args.quick:
        args.input_size = 64
    return args


def load_data(args: argparse.Namespace) -> dict[str, Any]:
    root = args.data
    train = pair_images_with_labels(root / "train" / "images", root / "train" / "labels")
    val = pair_images_with_labels(root / "val" / "images", root / "val" / "labels")
    unlabeled = [{"image": str(p)} for p in sorted((root / "unlabeled" / "images").glob("*.png"))]
    table = find_pixel_size_csv(root / "val" / "images")
    if table is None:
        raise FileNotFoundError(f"no pixel-size table for {root / 'val' / 'images'}")
    if args.quick:
        train, val, unlabeled = train[:8], val[:6], unlabeled[:8]
    return {"train": train, "val": val, "unlabeled": unlabeled, "spacing": read_pixel_size_csv(table), "table": table}


def label_subset(train: Sequence[Mapping[str, str]], size: int) -> list[Mapping[str, str]]:
    """A seeded subset of whole exams with about ``size`` images (split_by_exam's held-out part)."""
    _, subset = split_by_exam(train, val_fraction=size / len(train), seed=SEED)
    return subset


# ----------------------------------------------------------------------------------------------------------------
# Budget: measured throughput -> epochs
# ----------------------------------------------------------------------------------------------------------------


def measure_speed(
    spec: ModelSpec, cache: Sequence[dict[str, torch.Tensor]], frozen: bool, batch_size: int, epochs: int = 4
) -> dict[str, float]:
    """Training images/s (the trainer's own ``EpochLoop``: augmentation, forward, backward, Adam step) and validation
    images/s (``EpochLoop.validate``) of a fresh network, frozen encoder or not.

    Each is the fastest of ``epochs`` short epochs after a warm-up one (about 12 steps each), i.e. the speed of the CPU
    when nobody else uses it: the budget is in minutes of an idle machine, so every configuration gets the samples its
    own speed allows even when other jobs slow a measurement down.
    """
    config = TrainingConfig(spec=spec, batch_size=batch_size, device="cpu", seed=SEED, progress=False)
    loop = EpochLoop(config, DistributedContext())
    network = loop.place(spec.build_network())
    optimizer = Adam(stage_parameters(network, 1 if frozen else 2), lr=1e-4)
    per_image = math.ceil(12 * batch_size / len(cache))
    loader, dataset, sampler = build_train_loader(cache, per_image, batch_size, SEED)
    train_ips = 0.0
    for key in range(epochs + 1):
        dataset.set_epoch(key)
        sampler.set_epoch(key)
        trained = loop.train_epoch(network, optimizer, loader, key)
        if key > 0:
            train_ips = max(train_ips, trained.images_per_second)
    val = batches(list(cache), batch_size)
    loop.validate(network, val[:1])
    val_ips = 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        loop.validate(network, val)
        val_ips = max(val_ips, len(cache) / (time.perf_counter() - start))
    return {"train_ips": train_ips, "val_ips": val_ips}


def epoch_plan(
    seconds: float, images: int, train_ips: float, val_seconds: float, epoch_samples: int = EPOCH_SAMPLES
) -> tuple[int, int]:
    """``(epochs, samples_per_image)`` filling ``seconds`` with epochs of about ``epoch_samples`` samples."""
    per_image = max(1, round(epoch_samples / images))
    epoch_seconds = images * per_image / train_ips + val_seconds
    return max(1, round(seconds / epoch_seconds)), per_image


def samples_in_epoch(images: int, per_image: int, batch_size: int) -> int:
    """Samples one epoch trains on (the loader drops a lone last sample)."""
    total = images * per_image
    return total - 1 if total > 1 and total % batch_size == 1 else total


# ----------------------------------------------------------------------------------------------------------------
# One configuration
# ----------------------------------------------------------------------------------------------------------------


class EpochRecorder(TrainingCallback):
    """Keeps every epoch's summary (throughput, seconds) for the report."""

    def __init__(self) -> None:
        self.epochs: list[EpochSummary] = []

    def on_epoch_end(self, summary: EpochSummary) -> None:
        self.epochs.append(summary)


def training_config(
    configuration: Configuration,
    spec: ModelSpec,
    stages: tuple[int, ...],
    lr: Sequence[float],
    batch_size: int,
) -> TrainingConfig:
    """The run's settings; epochs and samples per image come from the stage planner."""
    config = TrainingConfig(
        spec=spec,
        pretrained=configuration.pretrained,
        run_stages=stages,
        batch_size=batch_size,
        device="cpu",
        seed=SEED,
        pseudo_labels=PseudoLabelConfig(),
        progress=False,
        tensorboard=False,
    )
    return config.with_stage_settings(lr=tuple(lr))


def evaluate_stage(path: Path, val: Sequence[Mapping[str, str]], spacing: Mapping, batch_size: int) -> dict[str, Any]:
    """Metrics of a saved model on the validation images' own grids (HD95 in mm), and every image's Dice."""
    start = time.perf_counter()
    predictor = Predictor.from_file(path, device="cpu")
    evaluation = evaluate_model(predictor, val, tta=False, spacing_lookup=spacing, batch_size=batch_size)
    return {
        "metrics": evaluation.metrics,
        "dice_per_image": evaluation.dice,
        "hd95_per_image": [float(r["hd95"]) for r in evaluation.records],
        "names": [r["name"] for r in evaluation.records],
        "hd95_note": evaluation.hd95_note(),
        "seconds": time.perf_counter() - start,
    }


def stage_record(
    stage: int,
    result: Any,
    epochs: Sequence[EpochSummary],
    planned_epochs: int,
    per_image: int,
    batch_size: int,
    lr: float,
) -> dict[str, Any]:
    mine = [e for e in epochs if e.stage == stage]
    per_epoch = samples_in_epoch(result.train_images, per_image, batch_size)
    samples = per_epoch * len(mine)
    train_seconds = sum(per_epoch / e.images_per_second for e in mine)
    return {
        "stage": stage,
        "name": STAGE_NAMES[stage],
        "lr": lr,
        "epochs_planned": planned_epochs,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "early_stopped": result.early_stopped,
        "train_images": result.train_images,
        "samples_per_image": per_image,
        "samples_seen": samples,
        "epoch_seconds": sum(e.seconds for e in mine),
        "train_seconds": train_seconds,
        "images_per_second": samples / train_seconds if train_seconds else math.nan,
        "best_val_dice_input_size": result.best_val_dice,
        "model": result.model_path,
    }


def run_configuration(
    configuration: Configuration, args: argparse.Namespace, data: Mapping[str, Any], machine: Mapping[str, Any]
) -> dict[str, Any]:
    wall_start = time.monotonic()
    load_start = load_average()
    out = args.out / configuration.name
    out.mkdir(parents=True, exist_ok=True)
    train = list(data["train"])
    if configuration.labels is not None:
        train = label_subset(train, 4 if args.quick else configuration.labels)
    val, unlabeled = data["val"], data["unlabeled"]
    spec = ModelSpec(architecture=configuration.architecture, encoder=configuration.encoder, input_size=args.input_size)
    stages = configuration.stages
    lr = args.lr or configuration.lr
    if len(lr) != len(stages):
        raise ValueError(f"{configuration.name} runs stages {stages}: give {len(stages)} learning rates, got {lr}")
    budget = args.minutes * 60.0
    epoch_samples = 16 if args.quick else EPOCH_SAMPLES
    share = SSCASE_STAGE_SHARE if len(stages) == 3 else dict.fromkeys(stages, 1.0)
    logger.info(
        "%s: %d training, %d validation, %d unlabelled images", configuration.name, len(train), len(val), len(unlabeled)
    )

    speeds: dict[str, dict[str, float]] = {}
    calibration_seconds = 0.0
    if args.epochs:
        if len(args.epochs) != len(stages):
            raise ValueError(f"{configuration.name} runs stages {stages}: give {len(stages)} epochs, got {args.epochs}")
        per_image = args.samples_per_image or (max(1, round(epoch_samples / len(train))),)
        given = {
            stage: StagePlan(args.epochs[i], per_image[min(i, len(per_image) - 1)] if stage == 3 else per_image[0])
            for i, stage in enumerate(stages)
        }

        def planner(stage: int, images: int) -> StagePlan:
            return given[stage]

    else:
        start = time.perf_counter()
        cache = preprocess_items(train[:16], spec, workers=2)
        modes = {"frozen": True, "full": False} if 1 in stages else {"full": False}
        for mode, frozen in modes.items():
            speeds[mode] = measure_speed(spec, cache, frozen, args.batch_size)
            logger.info(
                "%s: measured %s: %.1f train img/s, %.1f val img/s",
                configuration.name,
                mode,
                speeds[mode]["train_ips"],
                speeds[mode]["val_ips"],
            )
        calibration_seconds = time.perf_counter() - start

        def planner(stage: int, images: int) -> StagePlan:
            # stage 3's images (labelled + accepted pseudo-labels) are known only when it starts
            speed = speeds["frozen" if stage == 1 else "full"]
            val_seconds = len(val) / speed["val_ips"] + 1.0
            epochs, per_image = epoch_plan(
                budget * share[stage], images, speed["train_ips"], val_seconds, epoch_samples
            )
            return StagePlan(epochs, per_image)

    recorder = EpochRecorder()
    config = training_config(configuration, spec, stages, lr, args.batch_size)
    trainer = SemiSupervisedTrainer(
        config, train, val, unlabeled, out / "stages", callbacks=[recorder], stage_planner=planner
    )
    result = trainer.run()
    records: dict[str, Any] = {}
    for stage in stages:
        plan = trainer.plans[stage]
        logger.info("%s: stage %d ran with %s", configuration.name, stage, plan)
        records[str(stage)] = stage_record(
            stage,
            result.stages[stage],
            recorder.epochs,
            plan.epochs,
            plan.samples_per_image,
            args.batch_size,
            lr[stages.index(stage)],
        )
    pseudo: dict[str, Any] = {}
    if 3 in stages:
        pseudo["accepted"] = sum(r.accepted for r in result.pseudo_labels)
        pseudo["pool"] = len(result.pseudo_labels)
    train_end = time.monotonic()
    for stage, record in records.items():
        logger.info("%s: evaluating stage %s on %d validation images", configuration.name, stage, len(val))
        record["evaluation"] = evaluate_stage(Path(record["model"]), val, data["spacing"], args.batch_size)
    summary = {
        "name": configuration.name,
        "title": configuration.title,
        "architecture": configuration.architecture,
        "encoder": configuration.encoder if configuration.architecture != "basic_unet" else None,
        "pretrained": configuration.pretrained,
        "labelled_images": len(train),
        "label_subset": [Path(item["image"]).name for item in train] if configuration.labels else None,
        "val_images": len(val),
        "unlabeled_images": len(unlabeled) if 3 in stages else 0,
        "input_size": args.input_size,
        "batch_size": args.batch_size,
        "budget_minutes": args.minutes,
        "quick": args.quick,
        "stages": records,
        "pseudo_labels": pseudo,
        "calibration": speeds,
        "calibration_seconds": calibration_seconds,
        "training_wall_seconds": train_end - wall_start,
        "wall_seconds": time.monotonic() - wall_start,
        "load_average": [load_start, load_average()],
        "finished": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": dict(machine),
        "command": command(args, configuration.name),
        "exact_command": command(args, configuration.name, records),
    }
    (out / "result.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    return summary


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def command(args: argparse.Namespace, name: str, records: Mapping[str, Any] | None = None) -> str:
    """The command that reruns one configuration (with ``records``: with its measured schedule, no calibration)."""
    words = [".venv/bin/python", "bench/hc18_accuracy.py"]
    if args.quick:
        words.append("--quick")
    words += ["--data", str(args.data), "--minutes", f"{args.minutes:g}", "--input-size", str(args.input_size)]
    if args.batch_size != BATCH_SIZE:
        words += ["--batch-size", str(args.batch_size)]
    words += ["--out", str(args.out), "--only", name]
    if args.threads != 2:
        words += ["--threads", str(args.threads)]
    if args.lr:
        words += ["--lr", ",".join(f"{v:g}" for v in args.lr)]
    if records is not None:
        ordered = [records[k] for k in sorted(records)]
        words += ["--epochs", ",".join(str(r["epochs_planned"]) for r in ordered)]
        per_image = [str(ordered[0]["samples_per_image"])]
        if len(ordered) == 3:
            per_image.append(str(ordered[2]["samples_per_image"]))
        words += ["--samples-per-image", ",".join(per_image)]
    elif args.epochs:
        words += ["--epochs", ",".join(map(str, args.epochs))]
        if args.samples_per_image:
            words += ["--samples-per-image", ",".join(map(str, args.samples_per_image))]
    return shlex.join(words)


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def _stage_label(summary: Mapping[str, Any], stage: str) -> str:
    if summary["architecture"] == "sscase_unet":
        return f"{summary['name']} stage {stage} ({STAGE_NAMES[int(stage)]})"
    return summary["name"]


def _final(summary: Mapping[str, Any]) -> dict[str, Any]:
    return summary["stages"][max(summary["stages"])]["evaluation"]


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Mean of ``a - b`` over paired images and a seeded bootstrap 95% interval."""
    diff = np.asarray(a, float) - np.asarray(b, float)
    rng = np.random.default_rng(SEED)
    means = diff[rng.integers(0, len(diff), (BOOTSTRAP, len(diff)))].mean(axis=1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _pp(value: float) -> str:
    return f"{100 * value:+.2f}"


def headline(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines: list[str] = []
    ours = results.get("sscase_unet_196")
    baselines = [results[n] for n in ("basic_unet_196", "flexible_unet_196") if n in results]
    rows = [results[n] for n in CONFIGURATIONS if n in results]
    rows += [r for n, r in results.items() if n not in CONFIGURATIONS]
    if rows:
        lines += [
            "| configuration | model scored | Dice mean (%) | Dice pooled (%) | HD95 mean (mm) | HD95 undefined | "
            "training samples | training time (min) |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            final = max(r["stages"])
            m = r["stages"][final]["evaluation"]["metrics"]
            samples = sum(s["samples_seen"] for s in r["stages"].values())
            minutes = sum(s["epoch_seconds"] for s in r["stages"].values()) / 60
            lines.append(
                f"| {r['title']} | stage {final} best | {100 * m['mean']['dice']:.2f} | {100 * m['pooled']['dice']:.2f}"
                f" | {m['mean']['hd95']:.2f} | {m['hd95_undefined']} | {samples} | {minutes:.1f} |"
            )
        lines.append("")
    if ours is not None:
        for stage in sorted(set(ours["stages"]) - {"1"}):
            a = ours["stages"][stage]["evaluation"]
            for base in baselines:
                b = _final(base)
                mean, low, high = paired_difference(a["dice_per_image"], b["dice_per_image"])
                verdict = "better" if low > 0 else "worse" if high < 0 else "no clear difference"
                lines.append(
                    f"- SS_CASE_UNet 196 labels, stage {stage} vs {base['name']}: per-image Dice {_pp(mean)} points "
                    f"(paired bootstrap 95% CI {_pp(low)} to {_pp(high)}; {verdict}); pooled Dice "
                    f"{_pp(a['metrics']['pooled']['dice'] - b['metrics']['pooled']['dice'])} points; HD95 mean "
                    f"{a['metrics']['mean']['hd95'] - b['metrics']['mean']['hd95']:+.2f} mm."
                )
    few = results.get("sscase_unet_25")
    few_baseline = results.get("basic_unet_25")
    if few is not None and few_baseline is not None:
        b = _final(few_baseline)
        for stage in sorted(set(few["stages"]) - {"1"}):
            a = few["stages"][stage]["evaluation"]
            mean, low, high = paired_difference(a["dice_per_image"], b["dice_per_image"])
            verdict = "better" if low > 0 else "worse" if high < 0 else "no clear difference"
            lines.append(
                f"- SS_CASE_UNet 25 labels, stage {stage} vs basic_unet_25: per-image Dice {_pp(mean)} points "
                f"(paired bootstrap 95% CI {_pp(low)} to {_pp(high)}; {verdict}); pooled Dice "
                f"{_pp(a['metrics']['pooled']['dice'] - b['metrics']['pooled']['dice'])} points; HD95 mean "
                f"{a['metrics']['mean']['hd95'] - b['metrics']['mean']['hd95']:+.2f} mm."
            )
    if few is not None and {"2", "3"} <= set(few["stages"]):
        a, b = few["stages"]["3"]["evaluation"], few["stages"]["2"]["evaluation"]
        mean, low, high = paired_difference(a["dice_per_image"], b["dice_per_image"])
        verdict = "helps" if low > 0 else "hurts" if high < 0 else "no clear effect"
        pseudo = few.get("pseudo_labels", {})
        lines.append(
            f"- 25 labels, stage 3 (pseudo-labels: {pseudo.get('accepted', '?')} of {pseudo.get('pool', '?')} "
            f"unlabelled images accepted) vs stage 2: per-image Dice {_pp(mean)} points (95% CI {_pp(low)} to "
            f"{_pp(high)}: pseudo-labelling {verdict}); pooled Dice "
            f"{_pp(a['metrics']['pooled']['dice'] - b['metrics']['pooled']['dice'])} points; HD95 mean "
            f"{a['metrics']['mean']['hd95'] - b['metrics']['mean']['hd95']:+.2f} mm."
        )
    if ours is not None and "3" in ours["stages"] and "2" in ours["stages"]:
        a, b = ours["stages"]["3"]["evaluation"], ours["stages"]["2"]["evaluation"]
        mean, low, high = paired_difference(a["dice_per_image"], b["dice_per_image"])
        pseudo = ours.get("pseudo_labels", {})
        lines.append(
            f"- 196 labels, stage 3 ({pseudo.get('accepted', '?')} of {pseudo.get('pool', '?')} pseudo-labels "
            f"accepted) vs stage 2: per-image Dice {_pp(mean)} points (95% CI {_pp(low)} to {_pp(high)})."
        )
    return lines


def render_section(results: Mapping[str, Mapping[str, Any]]) -> str:
    any_result = next(iter(results.values()))
    machine = any_result["machine"]
    finished = sorted(r["finished"] for r in results.values())
    lines = [
        f"Measured {finished[0][:10]}"
        + (f" to {finished[-1][:10]}" if finished[-1][:10] != finished[0][:10] else "")
        + f" on {machine['cpu']}, {machine['cores']} cores, no GPU (torch {machine['torch']}, MONAI "
        f"{machine['monai']}, {machine['threads']} torch threads); the CPU is shared with other people's jobs, so "
        "images/s (and the samples a minute buys) are noisy: the load average at start and end of each run is given.",
        "",
        "Protocol: HC18 `train` (196 labelled images) trains, `val` (87) validates and is scored, `unlabeled` (335) is "
        "stage 3's pseudo-label pool. Every configuration goes through `SemiSupervisedTrainer` (baselines through "
        "`ModelSpec.architecture`) with the same training budget (epochs plus their per-epoch validation), batch "
        f"{any_result['batch_size']}, input {any_result['input_size']}x{any_result['input_size']}, the method's "
        "augmentation and loss, Adam, early stopping and LR-on-plateau with the method's patience, seed 0. The budget "
        "becomes epochs x samples per image from the images/s measured just before each run (~800 samples per epoch; "
        "SS_CASE_UNet splits it 20/50/30 % over stages 1/2/3, the paper's epoch ratio). Stage LRs for "
        "SS_CASE_UNet: 1e-3 (decoder from scratch, encoder frozen) / 1e-4 (full fine-tune: 10x lower so the "
        "pretrained encoder is not wrecked) / 5e-5 (pseudo-label retrain, half of stage 2); the paper's "
        f"{stage_values('lr').replace(',', '/')} are for {stage_values('epochs').replace(',', '/')} GPU epochs of "
        f"{SAMPLES_PER_IMAGE} samples per image, ~50x more samples than this budget. "
        "Baselines: the better of 1e-3 and 3e-3 in a 3-minute check (BasicUNet 3e-3, FlexibleUNet 1e-3; notes "
        "below). Each stage's best model (lowest validation loss) is scored by `evaluation.evaluate_model` "
        "on each image's original grid (predictions resized back), no test-time augmentation; HD95 in mm from "
        "`val/pixel_size_and_hc.csv`. Metrics as `metrics.format_metrics_table`: per-image mean and pooled counts.",
        "",
        "### Headline",
        "",
        *headline(results),
        "",
        "### Runs",
        "",
        "| configuration | stage | LR | epochs (best) | images x samples/image | training samples | training time "
        "(min) | img/s | wall time of the run (min) | load avg start/end |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results.values():
        for stage, s in sorted(r["stages"].items()):
            lines.append(
                f"| {r['name']} | {stage} | {s['lr']:g} | {s['epochs_run']} ({s['best_epoch']}) | {s['train_images']}"
                f" x {s['samples_per_image']} | {s['samples_seen']} | {s['epoch_seconds'] / 60:.1f} | "
                f"{s['images_per_second']:.1f} | {r['wall_seconds'] / 60:.1f} | "
                f"{r['load_average'][0]:.1f} / {r['load_average'][1]:.1f} |"
            )
    lines += [
        "",
        "Training time: epochs including their validation and checkpoint; wall time adds data checks, preprocessing, "
        "the throughput measurement, stage 3's pseudo-label count and prediction, and the trainer's own end-of-stage "
        "scoring, but not this script's scoring of the stage models.",
        "",
    ]
    for r in results.values():
        lines += [f"### {r['title']}", ""]
        lines.append(f"Command: `{r['command']}`  ")
        lines.append(f"Same schedule without the throughput measurement: `{r['exact_command']}`")
        lines.append("")
        detail = f"{r['labelled_images']} labelled training images"
        if r.get("label_subset"):
            detail += " (seeded whole-exam subset: " + ", ".join(r["label_subset"]) + ")"
        if r["pseudo_labels"]:
            p = r["pseudo_labels"]
            detail += f"; stage 3 pseudo-labels: {p.get('accepted')} of {p.get('pool')} unlabelled images accepted"
        lines += [detail + f"; wall time {r['wall_seconds'] / 60:.1f} min.", ""]
        table = {_stage_label(r, stage): s["evaluation"]["metrics"] for stage, s in sorted(r["stages"].items())}
        lines.append(format_metrics_table(table).rstrip("\n"))
        lines += ["", _final(r)["hd95_note"], ""]
    return "\n".join(lines) + "\n"


def load_results(out: Path) -> dict[str, dict[str, Any]]:
    results = {}
    order = list(CONFIGURATIONS)
    for path in sorted(
        out.glob("*/result.json"),
        key=lambda p: (order.index(p.parent.name) if p.parent.name in order else len(order), p.parent.name),
    ):
        results[path.parent.name] = json.loads(path.read_text())
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    os.chdir(REPO_ROOT)
    machine_description = machine()
    if not args.report_only:
        data = load_data(args)
        for name in args.only or list(CONFIGURATIONS):
            summary = run_configuration(CONFIGURATIONS[name], args, data, machine_description)
            table = {_stage_label(summary, s): r["evaluation"]["metrics"] for s, r in sorted(summary["stages"].items())}
            print(f"\n{summary['title']}: wall {summary['wall_seconds'] / 60:.1f} min")
            print(format_metrics_table(table), flush=True)
    results = load_results(args.out)
    if results and not args.no_results:
        write_section(SECTION_TITLE, render_section(results), "bench/hc18_accuracy.py", args.results)
        logger.info("updated %s", args.results)
    for line in headline(results):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
