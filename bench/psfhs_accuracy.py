"""Multi-class accuracy on real intrapartum ultrasound (PSFHS: pubic symphysis + fetal head) under a fixed budget.

PSFHS (``../shared/data/psfhs``: 256x256 PNGs, labels 0 background, 1 pubic symphysis, 2 fetal head) is split by
file with the library's seeded ``split_by_exam`` (every file is its own exam): 20 % held out for scoring, then 20 %
of the rest for validation (early stopping, LR on plateau), the remainder trains. Configurations (``--only NAME``):

- ``sscase_unet``: SS_CASE_UNet, ImageNet-pretrained EfficientNet-Lite0 encoder, 3-channel softmax, stage 1
  (decoder only, LR 1e-3) then stage 2 (full fine-tune, LR 1e-4); PSFHS has no unlabelled pool, so no stage 3;
- ``basic_unet``: MONAI ``BasicUNet`` (2-D), from scratch, stage 2 only (LR 3e-3, the better of 1e-3/3e-3 on HC18).

Both train through ``SemiSupervisedTrainer`` (the baseline via ``ModelSpec.architecture``) with the same budget in
epochs x samples: ``--epochs`` in total (SS_CASE_UNet: ``--stage1-epochs`` of them in stage 1), ``--samples-per-image``
augmented draws of each training image per epoch, batch 8, the method's augmentation and loss, seed 0. The final
model (the last stage's best by validation loss) is scored by ``evaluation.evaluate_model`` on the held-out images
at their own 256x256 grid; PSFHS has no pixel size, so HD95 is in pixels. Results go to ``OUT/<name>/result.json``
and the section "Multi-class accuracy on PSFHS (issue #13)" of ``bench/RESULTS.md``.

Example (from the repository root; each model takes about 10-20 minutes on 2 cores)::

    flock /work/heavy.lock .venv/bin/python bench/psfhs_accuracy.py --input-size 128
    .venv/bin/python bench/psfhs_accuracy.py --quick          # smoke test, ~1 minute, results in OUT only
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from common import RESULTS_FILE, SHARED_DATA, load_average, machine, setup_logging, write_section  # noqa: E402
from hc18_accuracy import EpochRecorder, paired_difference, samples_in_epoch  # noqa: E402

from sscase_monai.data import pair_images_with_labels, split_by_exam  # noqa: E402
from sscase_monai.evaluation import evaluate_model  # noqa: E402
from sscase_monai.inference import Predictor  # noqa: E402
from sscase_monai.method import BATCH_SIZE  # noqa: E402
from sscase_monai.metrics import format_metrics_table, format_per_class_table  # noqa: E402
from sscase_monai.model_files import ARCHITECTURE_TITLES, ModelSpec  # noqa: E402
from sscase_monai.training import SemiSupervisedTrainer, TrainingConfig  # noqa: E402

logger = logging.getLogger("psfhs_accuracy")

SECTION_TITLE = "Multi-class accuracy on PSFHS (issue #13)"
SCRIPT = "bench/psfhs_accuracy.py"
LABELS: dict[str, int] = {"pubic_symphysis": 1, "fetal_head": 2}
TEST_FRACTION = 0.2
VAL_FRACTION = 0.2
SEED = 0
CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "sscase_unet": {"architecture": "sscase_unet", "pretrained": True, "lr": (1e-3, 1e-4)},
    "basic_unet": {"architecture": "basic_unet", "pretrained": False, "lr": (3e-3,)},
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "psfhs", help="PSFHS folder (images/, labels/)")
    parser.add_argument("--input-size", type=int, default=128, help="network input side, multiple of 32 (128)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per configuration in total (20)")
    parser.add_argument("--stage1-epochs", type=int, default=5, help="of which SS_CASE_UNet's stage 1 (5)")
    parser.add_argument("--samples-per-image", type=int, default=6, help="augmented draws per image and epoch (6)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="images per step (%(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    parser.add_argument("--out", type=Path, help="output folder (bench/out/psfhs; --quick: bench/out/psfhs-quick)")
    parser.add_argument("--only", action="append", choices=sorted(CONFIGURATIONS), help="run this configuration")
    parser.add_argument("--quick", action="store_true", help="smoke test: 12/4/6 images, 64 px, 2 epochs")
    parser.add_argument("--results", type=Path, help="Markdown file to update (bench/RESULTS.md; --quick: OUT/...)")
    parser.add_argument("--report-only", action="store_true", help="only regenerate the results section from OUT")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = REPO_ROOT / "bench" / "out" / ("psfhs-quick" if args.quick else "psfhs")
    if args.results is None:
        args.results = args.out / "RESULTS.md" if args.quick else RESULTS_FILE
    if args.quick:
        args.input_size, args.epochs, args.stage1_epochs, args.samples_per_image = 64, 2, 1, 1
    if not 0 < args.stage1_epochs < args.epochs:
        parser.error(f"--stage1-epochs must be between 1 and --epochs - 1, got {args.stage1_epochs}")
    return args


def split(args: argparse.Namespace) -> dict[str, list[dict[str, str]]]:
    """Seeded split by file: test (scored), validation (early stopping), training."""
    pairs = pair_images_with_labels(args.data / "images", args.data / "labels")
    rest, test = split_by_exam(pairs, TEST_FRACTION, seed=SEED)
    train, val = split_by_exam(rest, VAL_FRACTION, seed=SEED)
    if args.quick:
        train, val, test = train[:12], val[:4], test[:6]
    return {"train": train, "val": val, "test": test}


def command(args: argparse.Namespace, name: str) -> str:
    words = [".venv/bin/python", SCRIPT]
    if args.quick:
        words.append("--quick")
    else:
        words += ["--input-size", str(args.input_size), "--epochs", str(args.epochs)]
        words += ["--stage1-epochs", str(args.stage1_epochs), "--samples-per-image", str(args.samples_per_image)]
    if args.data != SHARED_DATA / "psfhs":
        words += ["--data", str(args.data)]
    return shlex.join([*words, "--only", name])


def run_configuration(name: str, args: argparse.Namespace, data: Mapping[str, list], host: Mapping) -> dict[str, Any]:
    settings = CONFIGURATIONS[name]
    wall_start, load_start = time.monotonic(), load_average()
    out = args.out / name
    spec = ModelSpec.for_labels(LABELS, architecture=settings["architecture"], input_size=args.input_size)
    if settings["architecture"] == "sscase_unet":
        stages, epochs = (1, 2), (args.stage1_epochs, args.epochs - args.stage1_epochs)
    else:
        stages, epochs = (2,), (args.epochs,)
    config = TrainingConfig(
        spec=spec,
        pretrained=settings["pretrained"],
        run_stages=stages,
        batch_size=args.batch_size,
        samples_per_image=args.samples_per_image,
        device="cpu",
        seed=SEED,
        progress=False,
        tensorboard=False,
    ).with_stage_settings(epochs=epochs, lr=settings["lr"])
    recorder = EpochRecorder()
    logger.info("%s: stages %s, epochs %s, %d samples per image", name, stages, epochs, args.samples_per_image)
    result = SemiSupervisedTrainer(config, data["train"], data["val"], [], out / "run", callbacks=[recorder]).run()
    train_end = time.monotonic()
    per_epoch = samples_in_epoch(len(data["train"]), args.samples_per_image, args.batch_size)
    evaluation = evaluate_model(Predictor.from_file(result.model_path, device="cpu"), data["test"], tta=False)
    summary = {
        "name": name,
        "title": f"{ARCHITECTURE_TITLES[spec.architecture]}"
        + (" (lite0 ImageNet)" if settings["pretrained"] else " (scratch)"),
        "architecture": spec.architecture,
        "input_size": args.input_size,
        "batch_size": args.batch_size,
        "samples_per_image": args.samples_per_image,
        "split": {k: [Path(item["image"]).name for item in v] for k, v in data.items()},
        "stages": {
            str(s): {
                "epochs_planned": e,
                "lr": config.stage(s).lr,
                "epochs_run": result.stages[s].epochs_run,
                "best_epoch": result.stages[s].best_epoch,
                "samples": per_epoch * sum(r.stage == s for r in recorder.epochs),
                "seconds": sum(r.seconds for r in recorder.epochs if r.stage == s),
            }
            for s, e in zip(stages, epochs, strict=True)
        },
        "model": str(result.model_path),
        "metrics": evaluation.metrics,
        "dice_per_image": {str(v): [r[f"dice_class{v}"] for r in evaluation.records] for v in LABELS.values()},
        "names": [r["name"] for r in evaluation.records],
        "training_wall_seconds": train_end - wall_start,
        "wall_seconds": time.monotonic() - wall_start,
        "load_average": [load_start, load_average()],
        "finished": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": dict(host),
        "command": command(args, name),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(summary, indent=2))
    return summary


def render_section(results: Mapping[str, Mapping[str, Any]]) -> str:
    first = next(iter(results.values()))
    host, split_sizes = first["machine"], {k: len(v) for k, v in first["split"].items()}
    epochs = sum(s["epochs_planned"] for s in first["stages"].values())
    size = first["input_size"]
    lines = [
        f"Measured {first['finished'][:10]} on {host['cpu']}, {host['cores']} cores, no GPU (torch {host['torch']}, "
        f"MONAI {host['monai']}, {host['threads']} torch threads; load average at start/end of each run below).",
        "",
        f"Protocol: PSFHS ({sum(split_sizes.values())} labelled 256x256 images; 0 background, 1 pubic symphysis, "
        f"2 fetal head) split by file with `split_by_exam` seed {SEED}: {split_sizes['test']} held out and scored, "
        f"{split_sizes['val']} validate (early stopping, LR on plateau), {split_sizes['train']} train. Both networks "
        f"train through `SemiSupervisedTrainer` with the same budget: {epochs} epochs x {first['samples_per_image']} "
        f"augmented samples per training image, batch {first['batch_size']}, input {size}x{size}, 3-channel "
        f"softmax, the method's augmentation and loss, seed {SEED}. "
        "SS_CASE_UNet runs stage 1 (decoder only, LR 1e-3) then stage 2 (all layers, LR 1e-4); PSFHS has no "
        "unlabelled pool, so no stage 3. The BasicUNet trains from scratch in one stage (LR 3e-3). The final model "
        "(lowest validation loss) is scored by `evaluation.evaluate_model` on the held-out images at 256x256, no "
        "test-time augmentation; no pixel size exists, so HD95 is in pixels.",
        "",
        "### Per class",
        "",
        format_per_class_table({r["title"]: r["metrics"] for r in results.values()}, LABELS).rstrip("\n"),
        "",
    ]
    if {"sscase_unet", "basic_unet"} <= set(results):
        ours, base = results["sscase_unet"], results["basic_unet"]
        for name, value in LABELS.items():
            mean, low, high = paired_difference(ours["dice_per_image"][str(value)], base["dice_per_image"][str(value)])
            verdict = "better" if low > 0 else "worse" if high < 0 else "no clear difference"
            lines.append(
                f"- {name}: SS_CASE_UNet vs BasicUNet per-image Dice {100 * mean:+.2f} points (paired bootstrap 95% "
                f"CI {100 * low:+.2f} to {100 * high:+.2f}; {verdict})."
            )
        lines.append("")
    lines += [
        "### Averaged over the two classes",
        "",
        format_metrics_table({r["title"]: r["metrics"] for r in results.values()}).rstrip("\n"),
        "",
        "HD95 in pixels of the 256x256 images (PSFHS has no pixel size). Undefined HD95 (exactly one of prediction "
        "and ground truth empty for a class) is left out of the means: "
        + ", ".join(f"{r['name']} {r['metrics']['hd95_undefined']} (image, class) pair(s)" for r in results.values())
        + ".",
        "",
        "### Runs",
        "",
        "| configuration | stage | LR | epochs (best) | training samples | training time (min) | wall time (min) | "
        "load avg start/end | command |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results.values():
        for stage, s in sorted(r["stages"].items()):
            lines.append(
                f"| {r['name']} | {stage} | {s['lr']:g} | {s['epochs_run']} ({s['best_epoch']}) | {s['samples']} | "
                f"{s['seconds'] / 60:.1f} | {r['wall_seconds'] / 60:.1f} | {r['load_average'][0]:.1f} / "
                f"{r['load_average'][1]:.1f} | `{r['command']}` |"
            )
    lines += ["", "Held-out images: " + ", ".join(first["split"]["test"]) + "."]
    return "\n".join(lines) + "\n"


def load_results(out: Path) -> dict[str, dict[str, Any]]:
    return {
        name: json.loads((out / name / "result.json").read_text())
        for name in CONFIGURATIONS
        if (out / name / "result.json").is_file()
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    if not args.report_only:
        if not (args.data / "images").is_dir():
            raise SystemExit(f"PSFHS not found at {args.data} (give --data)")
        data, host = split(args), machine()
        for name in args.only or list(CONFIGURATIONS):
            summary = run_configuration(name, args, data, host)
            print(format_per_class_table({name: summary["metrics"]}, LABELS), flush=True)
    results = load_results(args.out)
    if results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        write_section(SECTION_TITLE, render_section(results), SCRIPT, args.results)
        logger.info("updated %s", args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
