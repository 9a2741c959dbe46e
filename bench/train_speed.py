"""Training throughput per stage at 256x256, batch 8, on the CPU, and the data loader alone.

The trainer's own ``EpochSummary.images_per_second`` for one short epoch per stage on the bundled sample data
(starting from the starter model), in a fresh process; then one epoch of the same augmented loader without training.

Usage: ``.venv/bin/python bench/train_speed.py [--quick]``; ``bench/run.py`` runs it with the other speed benchmarks.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from common import (  # noqa: E402  (bench/common.py)
    INPUT_SIZE,
    SAMPLE_DATA,
    STARTER_MODEL,
    Plan,
    fmt,
    peak_rss_mb,
    run_worker,
    speed_main,
    time_loader_epoch,
)


class _Throughput:
    """Training callback keeping each stage's reported throughput."""

    def __init__(self) -> None:
        from sscase_monai.training import TrainingCallback

        class Callback(TrainingCallback):
            def __init__(self, sink: dict[int, dict[str, float]]) -> None:
                self.sink = sink

            def on_epoch_end(self, summary: Any) -> None:
                self.sink[summary.stage] = {
                    "images_per_second": summary.images_per_second,
                    "epoch_seconds": summary.seconds,
                }

        self.stages: dict[int, dict[str, float]] = {}
        self.callback = Callback(self.stages)


def worker_train(job: dict[str, Any]) -> dict[str, Any]:
    """One short epoch per stage through the project's trainer; and the loader alone, without training."""
    import torch

    from sscase_monai.data import split_studies_folder
    from sscase_monai.method import BATCH_SIZE
    from sscase_monai.model_files import ModelSpec
    from sscase_monai.training import SemiSupervisedTrainer, TrainingConfig
    from sscase_monai.training.loaders import build_train_loader, preprocess_items

    torch.set_num_threads(job["threads"])
    plan = Plan(**job["plan"])
    labelled, unlabelled = split_studies_folder(SAMPLE_DATA)
    train, val = labelled[:-2], labelled[-2:]
    samples = max(1, math.ceil(plan.train_images / len(train)))
    spec = ModelSpec(input_size=INPUT_SIZE)
    config = TrainingConfig(
        spec=spec,
        pretrained=False,
        init_weights=str(STARTER_MODEL),  # decent pseudo-labels in stage 3, as a served app would have
        run_stages=(1, 2, 3),
        batch_size=BATCH_SIZE,
        samples_per_image=samples,
        device="cpu",
        progress=False,
        tensorboard=False,
        seed=0,
    ).with_stage_settings(epochs=(1, 1, 1))
    throughput = _Throughput()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sscase-bench-train-") as out_dir:
        SemiSupervisedTrainer(config, train, val, unlabelled, out_dir, callbacks=[throughput.callback]).run()
    total = time.perf_counter() - start
    cache = preprocess_items(train, spec)
    loader, dataset, sampler = build_train_loader(cache, samples, BATCH_SIZE, seed=0)
    images, loader_seconds = time_loader_epoch(loader, dataset, sampler)
    return {
        "stages": {str(k): v for k, v in sorted(throughput.stages.items())},
        "train_images": len(train),
        "samples_per_image": samples,
        "run_seconds": total,
        "loader_images_per_second": images / loader_seconds,
        "peak_rss_mb": peak_rss_mb(),
    }


def measure(plan: Plan, threads: int, env: dict[str, str]) -> dict[str, Any]:
    """One epoch per stage in a fresh process."""
    print("training: one epoch per stage ...", flush=True)
    return run_worker(Path(__file__), "train", {"threads": threads, "plan": asdict(plan)}, env)


def report_lines(train: dict[str, Any]) -> list[str]:
    """The training throughput table with how it was measured."""
    lines: list[str] = []
    if train:
        lines += [
            "### Training throughput, 256x256, batch 8, CPU",
            "",
            f"`SemiSupervisedTrainer` (channels-last on the CPU, no AMP), one epoch per stage on the bundled sample "
            f"data ({train['train_images']} labelled training images x {train['samples_per_image']} augmented samples;"
            " stage 3 adds the accepted pseudo-labels), starting from the starter model; images/s is the trainer's "
            "own `EpochSummary.images_per_second` (training steps only, validation excluded). Loader alone: one "
            "epoch of the same augmented loader (`num_workers=0`, the app's default) without training.",
            "",
            "| stage 1 (decoder) img/s | stage 2 (full) img/s | stage 3 (pseudo-labels) img/s | loader alone img/s | "
            "whole run (s) | peak RSS (MB) |",
            "|---|---|---|---|---|---|",
            "| "
            + " | ".join(fmt(train["stages"].get(str(s), {}).get("images_per_second"), 1) for s in (1, 2, 3))
            + f" | {train['loader_images_per_second']:.0f} | {train['run_seconds']:.0f} | "
            f"{train['peak_rss_mb']:.0f} |",
            "",
            "GPU (AMP, utilisation, data pipeline): `bench/gpu_check.py` on a GPU machine (not run here: no GPU).",
            "",
        ]
    return lines


WORKERS = {"train": worker_train}


def main(argv: Sequence[str] | None = None) -> int:
    return speed_main(__doc__, WORKERS, measure, lambda result, plan: report_lines(result), argv)


if __name__ == "__main__":
    sys.exit(main())
