"""Speed and memory side by side with the obvious alternatives (issue #6), on the CPU.

Measures, each against a baseline measured in the same run:

- model forward at 256x256, batch 1 and 8: SS_CASE_UNet (the app's starter model, EfficientNet-Lite0 encoder; and
  with the paper's B0 encoder) vs MONAI ``FlexibleUNet(backbone="efficientnet-b0")``, a plain MONAI ``UNet`` and
  MONAI ``BasicUNet``: parameters, GMACs, median/p95 latency, peak RSS. Each model runs in a fresh subprocess, once
  as plain eager eval (``eager``) and once as the app runs it (``optimized``: ``optimize_for_inference``);
- test-time augmentation: latency with TTA / without (``ProbabilityInferer``, the app's inferer);
- the server path: a real ``sscase-monai serve`` on 127.0.0.1, Slicer's client and parameters, an 800x540 PNG and a
  512x512x1 NIfTI uploaded (and by datastore id): round trip median/p95 minus the bare forward of the same model;
  where the time goes (the stage latencies the server reports);
- the server under load: 8 concurrent clients x N infers: throughput, p95, errors, server peak RSS;
- server start-up to the first answered ``/info/`` and the first (cold) infer;
- training throughput per stage at 256x256, batch 8 (the trainer's reported images/s, one short epoch per stage on
  the bundled sample data), and the data loader alone.

Usage (from the repository root)::

    .venv/bin/python bench/run.py            # full: the reference figures, ~8 minutes; writes bench/RESULTS.md
    .venv/bin/python bench/run.py --quick    # smoke run, ~2 minutes; writes RESULTS.md only with --write-results
    .venv/bin/python bench/run.py --only server,train --omp-passive   # parts; OpenMP passive wait on a shared CPU

Run it on an otherwise idle machine: the load average at start and end goes into RESULTS.md. On a CPU that another
torch job uses, OpenMP's default spin-waiting inflates every figure many times (see the notes it writes);
``--omp-passive`` gives usable figures there, and says so in the report.

Results: a table on stdout, ``bench/out/speed[-quick]/results.json``, and the section "Speed and memory (issue #6)"
of ``bench/RESULTS.md`` (only that section is replaced; the rest of the file is kept).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from common import (  # noqa: E402  (bench/common.py)
    RESULTS_FILE,
    SAMPLE_DATA,
    SHARED_DATA,
    STARTER_MODEL,
    fmt,
    machine,
    peak_rss_mb,
    stats,
    thread_env,
    time_calls,
    write_section,
)

SECTION_TITLE = "Speed and memory (issue #6)"
SLICER_PARAMS = {"result_extension": ".nrrd", "result_dtype": "uint8"}  # what Slicer's MONAI Label module asks for
INPUT_SIZE = 256

MODELS: dict[str, str] = {
    "sscase_unet": "SS_CASE_UNet, Lite0 encoder (the app's starter model)",
    "sscase_unet_b0": "SS_CASE_UNet, B0 encoder (the paper's)",
    "flexible_unet_b0": 'MONAI FlexibleUNet(backbone="efficientnet-b0")',
    "monai_unet": "MONAI UNet (16-256 channels, 2 residual units)",
    "basic_unet": "MONAI BasicUNet (default features)",
}
PASSIVE_VARIANT = "optimized, OMP passive"
GOALS = {"forward_ratio": 1.25, "tta_ratio": 5.5, "server_overhead_ms": 100.0, "load_errors": 0, "gpu_img_s": 800.0}


@dataclass(frozen=True)
class Plan:
    """How much to measure."""

    name: str
    models: tuple[str, ...]
    warmup: int
    reps_b1: int
    reps_b8: int
    reps_tta: int
    requests: int
    load_clients: int
    load_infers: int
    train_images: int


FULL = Plan("full", tuple(MODELS), 3, 30, 10, 20, 30, 8, 10, 64)
QUICK = Plan("quick", ("sscase_unet", "flexible_unet_b0", "monai_unet"), 2, 10, 3, 6, 10, 8, 3, 16)


# ----------------------------------------------------------------------------------------------------------------
# Workers (fresh subprocesses: peak RSS of one model, nothing cached from another)
# ----------------------------------------------------------------------------------------------------------------


def build_model(name: str) -> Any:
    from monai.networks.nets import BasicUNet, FlexibleUNet, UNet

    from sscase_monai.model_files import ModelSpec, load_model

    if name == "sscase_unet":
        return load_model(STARTER_MODEL)[0]
    if name == "sscase_unet_b0":
        return ModelSpec(encoder="efficientnet-b0").build_network()
    if name == "flexible_unet_b0":
        return FlexibleUNet(in_channels=3, out_channels=1, backbone="efficientnet-b0", pretrained=False, spatial_dims=2)
    if name == "monai_unet":
        return UNet(
            spatial_dims=2,
            in_channels=3,
            out_channels=1,
            channels=(16, 32, 64, 128, 256),
            strides=(2, 2, 2, 2),
            num_res_units=2,
        )
    if name == "basic_unet":
        return BasicUNet(spatial_dims=2, in_channels=3, out_channels=1)
    raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")


def worker_forward(job: dict[str, Any]) -> dict[str, Any]:
    """Forward latency and memory of one model in one variant (and TTA for the app's model)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from sscase_monai.inference import ProbabilityInferer, optimize_for_inference

    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    plan = Plan(**job["plan"])
    rss_start = peak_rss_mb()
    network = build_model(job["model"]).eval()
    if job["variant"].startswith("optimized"):
        network = optimize_for_inference(network, inplace=True)
    out: dict[str, Any] = {
        "model": job["model"],
        "variant": job["variant"],
        "params_m": sum(p.numel() for p in network.parameters()) / 1e6,
        "rss_start_mb": rss_start,
        "rss_built_mb": peak_rss_mb(),
    }
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if job["variant"] == "eager":
            with FlopCounterMode(display=False) as counter:
                network(torch.rand(1, 3, INPUT_SIZE, INPUT_SIZE, generator=generator))
            out["gmacs"] = counter.get_total_flops() / 2 / 1e9
        for batch, reps in ((1, plan.reps_b1), (8, plan.reps_b8)):
            x = torch.rand(batch, 3, INPUT_SIZE, INPUT_SIZE, generator=generator)
            out[f"b{batch}"] = stats(time_calls(lambda x=x: network(x), plan.warmup, reps))
            out[f"b{batch}"]["peak_rss_mb"] = peak_rss_mb()
        if job.get("tta"):
            # interleaved, so that load changes hit both alike; the ratio is what the goal is about
            x = torch.rand(1, 3, INPUT_SIZE, INPUT_SIZE, generator=generator)
            plain, tta = ProbabilityInferer(tta=False), ProbabilityInferer(tta=True)
            for _ in range(plan.warmup):
                plain(x, network), tta(x, network)
            times: dict[str, list[float]] = {"plain": [], "tta": []}
            for _ in range(plan.reps_tta):
                for key, inferer in (("plain", plain), ("tta", tta)):
                    start = time.perf_counter()
                    inferer(x, network)
                    times[key].append(time.perf_counter() - start)
            out["tta"] = {key: stats(value) for key, value in times.items()}
            out["tta"]["ratio"] = out["tta"]["tta"]["median_ms"] / out["tta"]["plain"]["median_ms"]
    return out


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
        batch_size=8,
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
    loader, dataset, sampler = build_train_loader(cache, samples, 8, seed=0)
    dataset.set_epoch(1)
    sampler.set_epoch(1)
    images, start = 0, time.perf_counter()
    for batch in loader:
        images += batch["image"].shape[0]
    loader_seconds = time.perf_counter() - start
    return {
        "stages": {str(k): v for k, v in sorted(throughput.stages.items())},
        "train_images": len(train),
        "samples_per_image": samples,
        "run_seconds": total,
        "loader_images_per_second": images / loader_seconds,
        "peak_rss_mb": peak_rss_mb(),
    }


def worker_bare(job: dict[str, Any]) -> None:
    """Bare forwards on request: the app's model, loaded and optimised as the app does, on an image preprocessed as
    the app does; each line on stdin runs one forward of the named input and answers its seconds on stdout."""
    import torch

    from sscase_monai.inference import ProbabilityInferer, optimize_for_inference
    from sscase_monai.model_files import load_model
    from sscase_monai.transforms import infer_transforms

    torch.set_num_threads(job["threads"])
    network = optimize_for_inference(load_model(STARTER_MODEL)[0], inplace=True)
    preprocess = infer_transforms()
    inputs = {name: preprocess({"image": path})["image"].as_tensor()[None] for name, path in job["inputs"].items()}
    inferer = ProbabilityInferer(tta=False)
    for name in inputs:
        for _ in range(2):
            inferer(inputs[name], network)
    print("ready", flush=True)
    for line in sys.stdin:
        start = time.perf_counter()
        inferer(inputs[line.strip()], network)
        print(time.perf_counter() - start, flush=True)


class BareForward:
    """A :func:`worker_bare` process: bare forwards interleaved with the server's requests (same moment, same load)."""

    def __init__(self, inputs: dict[str, Path], threads: int, env: dict[str, str]) -> None:
        job = {"threads": threads, "inputs": {name: str(path) for name, path in inputs.items()}}
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "bare", json.dumps(job), "-"]
        self.process = subprocess.Popen(
            command,
            env={**os.environ, **env, "PYTHONWARNINGS": "ignore"},
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the bare-forward worker did not start")

    def __call__(self, name: str) -> float:
        self.process.stdin.write(f"{name}\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def run_worker(kind: str, job: dict[str, Any], env: dict[str, str], timeout: float = 900.0) -> dict[str, Any]:
    """Run a worker in a fresh interpreter and return its JSON result."""
    with tempfile.TemporaryDirectory(prefix="sscase-bench-") as tmp:
        result = Path(tmp) / "result.json"
        env = {**os.environ, **env, "PYTHONWARNINGS": "ignore"}
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, json.dumps(job), str(result)]
        done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0 or not result.is_file():
            raise RuntimeError(f"worker {kind} {job.get('model', '')} failed:\n{done.stderr[-3000:]}")
        return json.loads(result.read_text())


# ----------------------------------------------------------------------------------------------------------------
# Server measurements
# ----------------------------------------------------------------------------------------------------------------


def make_inputs(folder: Path) -> dict[str, Any]:
    """An 800x540 PNG (an HC18 scan when ../shared/data has it, else a synthetic one) and a 512x512x1 NIfTI."""
    import numpy as np
    import SimpleITK as sitk

    from sscase_monai import io
    from sscase_monai.sample_data import generate_sample

    folder.mkdir(parents=True, exist_ok=True)
    png = folder / "bench_png.png"
    hc18 = sorted((SHARED_DATA / "hc18" / "train" / "images").glob("*.png")) if SHARED_DATA.is_dir() else []
    hc18 = [p for p in hc18 if io.read_image(p)[0].shape == (540, 800)][:1]
    if hc18:
        shutil.copyfile(hc18[0], png)
        png_source = f"HC18 {hc18[0].name}"
    else:
        image, _, _ = generate_sample(0, (800, 540))
        sitk.WriteImage(sitk.GetImageFromArray(image), str(png))
        png_source = "synthetic (sscase_monai.sample_data, seed 0)"
    image, _, info = generate_sample(1, (512, 512))
    spacing = info["pixel_spacing_mm"]
    geometry = io.ImageGeometry((512, 512, 1), (spacing, spacing, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    nifti = folder / "bench_nifti.nii.gz"
    sitk.WriteImage(io.mask_to_image(np.asarray(image), geometry), str(nifti), useCompression=True)
    return {"png": png, "nifti": nifti, "png_source": png_source}


class RssMonitor:
    """Samples the server's resident memory (its process and children) in a thread; peak per phase."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.interval = interval
        self.phase = "idle"
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> float:
        import psutil

        total = 0
        for process in [self.process, *self.process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
        return total / 2**20

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                rss = self._sample()
            except psutil.Error:
                return
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def start_server(studies: Path, workdir: Path, env: dict[str, str]) -> tuple[Any, float]:
    """Start ``sscase-monai serve`` and time it to the first answered ``/info/`` (polled every 50 ms)."""
    import requests
    from server import ServerProcess

    server = ServerProcess(
        studies,
        workdir,
        env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false", **env},
    )
    workdir.mkdir(parents=True, exist_ok=True)
    server._log = open(server.log_path, "wb")  # noqa: SIM115 - closed by server.stop()
    start = time.monotonic()
    server.process = subprocess.Popen(
        server.command(),
        stdout=server._log,
        stderr=subprocess.STDOUT,
        env=server.env,
        cwd=workdir,
        start_new_session=True,
    )
    while time.monotonic() - start < 300:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            if requests.get(f"{server.url}/info/", timeout=5).ok:
                return server, time.monotonic() - start
        except requests.RequestException:
            pass
        time.sleep(0.05)
    server.stop()
    raise TimeoutError(f"server did not answer within 300 s:\n{server.log_tail()}")


def one_infer(client: Any, image_id: str, file: Path | None) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    result, params = client.infer("sscase", image_id, dict(SLICER_PARAMS), file=str(file) if file else None)
    seconds = time.perf_counter() - start
    if result:
        Path(result).unlink(missing_ok=True)
    return seconds, params


def stage_latencies(params: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Median of each stage latency the server reports (ms): transforms to 0.1 ms, the others to 10 ms."""
    values: dict[str, list[float]] = {}
    for p in params:
        latencies = p.get("latencies", {})
        for key in ("pre", "infer", "post", "write", "total"):
            values.setdefault(key, []).append(1000 * float(latencies.get(key, math.nan)))
        for stage, transforms in (latencies.get("transform") or {}).items():
            for name, seconds in transforms.items():
                values.setdefault(f"{stage}:{name}", []).append(1000 * float(seconds))
    return {key: statistics.median(v) for key, v in values.items()}


def measure_server(plan: Plan, threads: int, env: dict[str, str], workdir: Path) -> dict[str, Any]:
    from server import copy_studies, slicer_client

    studies = copy_studies(SAMPLE_DATA, workdir / "studies")
    inputs = make_inputs(workdir / "inputs")
    shutil.copyfile(inputs["png"], studies / "bench_png.png")
    shutil.copyfile(inputs["nifti"], studies / "bench_nifti.nii.gz")
    server, startup = start_server(studies, workdir / "server", env)
    out: dict[str, Any] = {"startup_seconds": startup, "png_source": inputs["png_source"]}
    try:
        with RssMonitor(server.process.pid) as memory:
            time.sleep(0.5)
            memory.phase = "single client"
            client = slicer_client(server)
            seconds, _ = one_infer(client, "", inputs["png"])
            out["cold_infer_ms"] = 1000 * seconds
            cases = {
                "PNG 800x540, uploaded": ("", inputs["png"], "png"),
                "NIfTI 512x512x1, uploaded": ("", inputs["nifti"], "nifti"),
                "PNG 800x540, datastore id": ("bench_png", None, "png"),
                "NIfTI 512x512x1, datastore id": ("bench_nifti", None, "nifti"),
            }
            out["path"] = {}
            # the server runs with `sscase-monai serve`'s OpenMP wait policy (PASSIVE unless set): so does its twin
            bare_env = {**env, "OMP_WAIT_POLICY": env.get("OMP_WAIT_POLICY", "PASSIVE")}
            bare = BareForward({"png": inputs["png"], "nifti": inputs["nifti"]}, threads, bare_env)
            try:
                for label, (image_id, file, name) in cases.items():
                    for _ in range(2):
                        one_infer(client, image_id, file)
                        bare(name)
                    times, params, bare_times = [], [], []
                    for _ in range(plan.requests):
                        seconds, p = one_infer(client, image_id, file)
                        times.append(seconds)
                        params.append(p)
                        bare_times.append(bare(name))
                    out["path"][label] = {
                        "round_trip": stats(times),
                        "bare_forward": stats(bare_times),
                        "server": stage_latencies(params),
                    }
            finally:
                bare.close()
            memory.phase = "load"
            out["load"] = measure_load(server, plan, inputs)
        out["server_rss_mb"] = memory.peaks
        log = server.log_path.read_text(errors="replace")
        # SSCASEInfer logs "infer model <path> loaded on <device>" whenever it (re)loads a model file
        out["model_loads"] = sum("infer model " in line and " loaded on " in line for line in log.splitlines())
    finally:
        server.stop()
    return out


def measure_load(server: Any, plan: Plan, inputs: dict[str, Any]) -> dict[str, Any]:
    """``load_clients`` Slicer clients at once, each running ``load_infers`` uploads (PNG and NIfTI alternately)."""
    from server import slicer_client

    barrier = threading.Barrier(plan.load_clients + 1)
    latencies: list[float] = []
    server_totals: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        client = slicer_client(server)
        barrier.wait()
        for i in range(plan.load_infers):
            file = inputs["png"] if (index + i) % 2 == 0 else inputs["nifti"]
            try:
                seconds, params = one_infer(client, "", file)
                with lock:
                    latencies.append(seconds)
                    server_totals.append(float(params["latencies"]["total"]))
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                with lock:
                    errors.append(f"{type(e).__name__}: {str(e)[:200]}")

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(plan.load_clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {
        "clients": plan.load_clients,
        "infers_per_client": plan.load_infers,
        "completed": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:3],
        "wall_seconds": wall,
        "throughput_per_second": len(latencies) / wall,
        "latency": stats(latencies),
        "server_total": stats(server_totals),
    }


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def forward_rows(results: dict[str, Any]) -> list[str]:
    forward = results["forward"]
    rows = [
        "| model | variant | params (M) | GMACs (b1) | b1 median / p95 (ms) | b8 median / p95 (ms) | "
        "b1 / b8 vs FlexibleUNet | RSS imports / peak b1 / peak b8 (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    gmacs = {r["model"]: r.get("gmacs") for r in forward if r["variant"] == "eager"}
    for r in forward:
        base = next(
            (b for b in forward if b["model"] == "flexible_unet_b0" and b["variant"] == r["variant"]),
            None,
        )
        ratio = (
            f"{r['b1']['median_ms'] / base['b1']['median_ms']:.2f}x / "
            f"{r['b8']['median_ms'] / base['b8']['median_ms']:.2f}x"
            if base
            else "n/a"
        )
        rows.append(
            f"| {r['model']} | {r['variant']} | {r['params_m']:.2f} | {fmt(gmacs.get(r['model']), 2)} | "
            f"{r['b1']['median_ms']:.0f} / {r['b1']['p95_ms']:.0f} | {r['b8']['median_ms']:.0f} / "
            f"{r['b8']['p95_ms']:.0f} | {ratio} | {r['rss_start_mb']:.0f} / {r['b1']['peak_rss_mb']:.0f} / "
            f"{r['b8']['peak_rss_mb']:.0f} |"
        )
    return rows


def server_overhead(path: dict[str, Any]) -> float:
    """Round-trip median minus the bare forward's median measured between the same requests (ms)."""
    return path["round_trip"]["median_ms"] - path["bare_forward"]["median_ms"]


def server_rows(results: dict[str, Any]) -> list[str]:
    server = results.get("server")
    if not server:
        return []
    rows = [
        "| input (Slicer's params: .nrrd, uint8) | round trip median / p95 (ms) | bare forward median (ms) | "
        "overhead (ms) | server total | load / resize / median | inferer | restore | write (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in server["path"].items():
        s = r["server"]
        rows.append(
            f"| {label} | {r['round_trip']['median_ms']:.0f} / {r['round_trip']['p95_ms']:.0f} | "
            f"{r['bare_forward']['median_ms']:.0f} | {server_overhead(r):.0f} | {s['total']:.0f} | "
            f"{s.get('pre:LoadUltrasoundd', math.nan):.1f} / {s.get('pre:ResizeToInputd', math.nan):.1f} / "
            f"{s.get('pre:MedianDenoised', math.nan):.1f} | {s['infer']:.0f} | "
            f"{s.get('post:RestoreToOriginald', math.nan):.1f} | {s['write']:.0f} |"
        )
    return rows


def goal_rows(results: dict[str, Any]) -> list[str]:
    rows = ["| goal | measured | met |", "|---|---|---|"]

    def add(goal: str, measured: str, met: bool | None) -> None:
        rows.append(f"| {goal} | {measured} | {'yes' if met else 'no' if met is not None else 'not measured'} |")

    forward = {(r["model"], r["variant"]): r for r in results["forward"]}
    for variant in ("eager", "optimized"):
        a, b = forward.get(("sscase_unet", variant)), forward.get(("flexible_unet_b0", variant))
        if a and b:
            r1 = a["b1"]["median_ms"] / b["b1"]["median_ms"]
            r8 = a["b8"]["median_ms"] / b["b8"]["median_ms"]
            add(
                f"SS_CASE_UNet <= {GOALS['forward_ratio']}x FlexibleUNet latency ({variant}, b1 / b8)",
                f"{r1:.2f}x / {r8:.2f}x",
                max(r1, r8) <= GOALS["forward_ratio"],
            )
    tta = forward.get(("sscase_unet", "optimized"), {}).get("tta")
    if tta:
        ratio = tta["ratio"]
        add(
            f"TTA / no TTA <= {GOALS['tta_ratio']}x (b1, as the app runs it)",
            f"{ratio:.2f}x",
            ratio <= GOALS["tta_ratio"],
        )
    server = results.get("server")
    if server:
        worst = max(server_overhead(r) for r in server["path"].values())
        add(
            f"server overhead <= {GOALS['server_overhead_ms']:.0f} ms "
            "(round trip median minus bare forward, worst input)",
            f"{worst:.0f} ms",
            worst <= GOALS["server_overhead_ms"],
        )
        load = server["load"]
        sent = load["clients"] * load["infers_per_client"]
        add(f"errors under {load['clients']} clients = 0", f"{load['errors']} of {sent}", load["errors"] == 0)
    add(f"training >= {GOALS['gpu_img_s']:.0f} img/s on an H100 (AMP)", "no GPU here: `bench/gpu_check.py`", None)
    return rows


def forward_section(results: dict[str, Any]) -> list[str]:
    return [
        "### Model forward, 256x256, CPU",
        "",
        "Each model in a fresh process (random input, `torch.no_grad`, warm-ups, then median and p95). `eager`: plain"
        " eval mode; `optimized`: `sscase_monai.inference.optimize_for_inference` (batch norm and symmetric padding "
        "folded into the convolutions of MONAI's EfficientNet blocks; channels-last unless the network has instance "
        "norm, where it was slower), which the app and `Predictor.from_file` use. GMACs: convolutions and matrix "
        "products counted by `torch.utils.flop_counter.FlopCounterMode` (MACs = FLOPs / 2). RSS: the worker's peak "
        "(`VmHWM`; `ru_maxrss` would carry the forking bench's peak) after importing torch and MONAI, then after the "
        "batch-1 and the batch-8 runs. `optimized, OMP passive`: the same as `optimized` in a process started with "
        "`OMP_WAIT_POLICY=PASSIVE` (see the notes).",
        "",
        *forward_rows(results),
        "",
    ]


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    plan = results["plan"]
    lines = [
        f"Generated by `{results['command']}` on {results['date']} ({plan['name']} mode, "
        f"{results['elapsed_minutes']:.1f} min). Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, "
        f"{m['os']}; Python {m['python']}, torch {m['torch']}, MONAI {m['monai']}, MONAI Label {m['monailabel']}; "
        f"torch threads {results['threads']} (`torch.set_num_threads`, `OMP_NUM_THREADS`), OpenMP wait policy "
        f"{results['omp_wait_policy']} (the server and its bare-forward twin: PASSIVE, `sscase-monai serve`'s "
        "default).",
        f"Load average (1/5/15 min) at start {results['loadavg_start']}, at end {results['loadavg_end']}: "
        "above ~0.3 another job shared the CPU and the absolute times are inflated and noisy.",
        "",
    ]
    if results["forward"]:
        lines += forward_section(results)
    tta = next((r.get("tta") for r in results["forward"] if r.get("tta")), None)
    if tta:
        lines += [
            "### Test-time augmentation",
            "",
            "`ProbabilityInferer` (the app's inferer) on the starter model as the app runs it, batch 1; the five views "
            "(identity, flips, rot90, rot270) go through the network as one batch of 5. Measured interleaved.",
            "",
            "| no TTA median / p95 (ms) | TTA median / p95 (ms) | TTA / no TTA |",
            "|---|---|---|",
            f"| {tta['plain']['median_ms']:.0f} / {tta['plain']['p95_ms']:.0f} | {tta['tta']['median_ms']:.0f} / "
            f"{tta['tta']['p95_ms']:.0f} | {tta['ratio']:.2f}x |",
            "",
        ]
    server = results.get("server")
    if server:
        load = server["load"]
        rss = server["server_rss_mb"]
        lines += [
            "### Server path (`POST /infer/sscase`)",
            "",
            "A real `sscase-monai serve` on 127.0.0.1 (starter model, studies = a copy of `sample-data/` + the two "
            f"inputs), Slicer's `monailabel` client, {plan['requests']} requests per input after 2 warm-ups. PNG: "
            f"{server['png_source']}; NIfTI: synthetic. Bare forward: the same model loaded and optimised as the app "
            "does, on the same image preprocessed as the app does (1x3x256x256), one forward right after each request"
            " in a separate process with the same threads, so that both see the same load; overhead = round-trip "
            "median - bare-forward median. Stage columns: medians of what the server reports per request "
            "(`latencies`; transforms to 0.1 ms, the others rounded by MONAI Label to 10 ms).",
            "",
            *server_rows(results),
            "",
            "| start-up to first /info | first infer (cold, PNG upload) | model loads in the server log |",
            "|---|---|---|",
            f"| {server['startup_seconds']:.1f} s | {server['cold_infer_ms']:.0f} ms | {server['model_loads']} |",
            "",
            "### Server under load",
            "",
            f"{load['clients']} clients at once, {load['infers_per_client']} uploads each (PNG and NIfTI "
            "alternately). Server RSS: the server process and its children, sampled every 50 ms.",
            "",
            "| completed | errors | wall (s) | throughput (infer/s) | latency median / p95 (ms) | "
            "server total median (ms) | server peak RSS idle / single client / load (MB) |",
            "|---|---|---|---|---|---|---|",
            f"| {load['completed']} | {load['errors']} | {load['wall_seconds']:.1f} | "
            f"{load['throughput_per_second']:.2f} | {load['latency']['median_ms']:.0f} / "
            f"{load['latency']['p95_ms']:.0f} | {load['server_total']['median_ms']:.0f} | {fmt(rss.get('idle'), 0)} / "
            f"{fmt(rss.get('single client'), 0)} / {fmt(rss.get('load'), 0)} |",
            "",
        ]
    train = results.get("train")
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
    lines += ["### Goals", "", *goal_rows(results), "", *NOTES, ""]
    return "\n".join(lines)


NOTES = [
    "### What was made faster, and what was left",
    "",
    "Before/after figures below were measured on 2026-11-28 on this 2-core machine while another training job ran "
    "(load average 2.5-5), old and new code interleaved request by request so that both saw the same load.",
    "",
    "- Model: `optimize_for_inference` (the app and `Predictor.from_file`): compare the `eager` and `optimized` rows.",
    "- Server path, HEAD before this change vs after, 30 interleaved requests each, `OMP_WAIT_POLICY=PASSIVE`: PNG "
    "800x540 upload 109 -> 89 ms, NIfTI 512x512x1 upload 112 -> 88 ms round-trip median. With the default OpenMP "
    "policy (15 requests): 3531 -> 1358 ms and 3466 -> 1359 ms (the median filter alone 1031 -> 8 ms).",
    "- 5x5 median filter: NumPy instead of torch elementwise ops. Torch split each of its ~80 small ops over 2 "
    "threads and, on a busy CPU, waited for a descheduled thread every time (6-22 ms median, p90 ~1 s per 256x256 "
    "plane); NumPy takes 3.4-3.6 ms whatever the load and releases the GIL. On an idle CPU torch was ~1 ms faster.",
    "- Training augmentation (`RandPaperAugmentd`): mask morphology by NumPy min/max of shifted views instead of "
    "scipy (same values, ~7x faster per filter), classes found by `bincount` for uint8 masks, the centre zoom of a "
    "gray image zoomed once instead of per RGB channel: 6.0 -> 4.2 ms per sample (same random draws).",
    "- CPU shared with another torch process (a training started from Slicer beside the server, or any other job): "
    "with OpenMP's default active wait both processes spin at every parallel region. With a 2-thread training "
    "running, SS_CASE_UNet batch 1 took 1309 ms median with the default policy, 57 ms with "
    "`OMP_WAIT_POLICY=PASSIVE`, 52 ms on 1 thread (rechecked before the change: 1300 vs 59 ms; beside the app's "
    "own `sscase-monai train` on the sample data 99 vs 57 ms; `GOMP_SPINCOUNT=10000` instead: 107 ms). So "
    "`sscase-monai serve` now starts the server with `OMP_WAIT_POLICY=PASSIVE` unless the user set the variable "
    "(`server_environment()`; MONAI Label's training subprocess inherits it), and the server rows above run with it; "
    "the `optimized, OMP passive` row shows what the policy costs a lone process on this run's machine (and CPU "
    "training, which inherits it: 8.0 -> 7.1 img/s for `sscase-monai train --studies sample-data --stages 2 "
    "--epochs 1`). A Run that stays fast while a training runs was judged worth more; `OMP_WAIT_POLICY=ACTIVE` "
    "before `serve` restores the other trade-off.",
    "- Infer by datastore id (what Slicer's Run sends after Next Sample) reads the image inside the studies folder, "
    "which MONAI Label's datastore watched with watchdog/inotify for every event: each open and close of the file "
    "woke the watcher thread, which then waited for the GIL held by the request. On a quiet CPU (2026-11-28 06:07, "
    "before the change) loading took 22-24 ms by id against 5-9 ms for the same file uploaded, and the by-id round "
    "trip was 101-103 ms against 85-88 ms. `SSCASEDatastore` now re-schedules the watcher for the events its "
    "handler uses (created, deleted, modified, moved; `tests/test_datastore.py`); compare the `load` column of the "
    "datastore-id rows above.",
    "- Not waste (measured, left alone): the model is loaded once per file version (the log count above); "
    "`instance.info()`, which MONAI Label calls on every infer, costs ~0.3 ms even with 1000 images in the "
    "datastore; request logging is a few lines per request.",
    "- Requests are served one at a time: MONAI Label's `/infer` endpoint is `async` and runs the whole infer in "
    "the event loop, so concurrent clients queue (latency under load ~ clients x one request; the server-side "
    "total under load equals the single-client one) and two requests' torch threads never compete inside the "
    "server: a lock or a per-request thread count would change nothing. Serving two at once would need a change "
    "in MONAI Label.",
]


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer models and repetitions (~3 minutes)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads everywhere (default 2)")
    parser.add_argument("--only", default="forward,server,train", help="comma list of forward, server, train")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/out/speed[-quick])")
    parser.add_argument("--write-results", action="store_true", help="update bench/RESULTS.md (default in full mode)")
    parser.add_argument("--no-results", action="store_true", help="do not touch bench/RESULTS.md")
    parser.add_argument(
        "--omp-passive",
        action="store_true",
        help="run every measured process with OMP_WAIT_POLICY=PASSIVE (for a CPU shared with other jobs)",
    )
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "JOB", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        kind, job, out = args.worker
        if kind == "bare":
            worker_bare(json.loads(job))
            return 0
        result = {"forward": worker_forward, "train": worker_train}[kind](json.loads(job))
        Path(out).write_text(json.dumps(result))
        return 0

    plan = QUICK if args.quick else FULL
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = parts - {"forward", "server", "train"}
    if unknown:
        parser.error(f"--only takes forward, server, train; got {sorted(unknown)}")
    out_dir = args.out or REPO_ROOT / "bench" / "out" / ("speed-quick" if args.quick else "speed")
    out_dir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    results: dict[str, Any] = {
        "command": " ".join(["python bench/run.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "plan": asdict(plan),
        "threads": args.threads,
        "omp_wait_policy": "PASSIVE" if args.omp_passive else "default",
        "machine": machine(),
        "loadavg_start": " / ".join(f"{v:.2f}" for v in os.getloadavg()),
        "forward": [],
    }
    job = {"threads": args.threads, "plan": asdict(plan)}
    env = thread_env(args.threads, args.omp_passive)
    if "forward" in parts:
        runs = [(model, variant, env) for model in plan.models for variant in ("eager", "optimized")]
        if not args.omp_passive:  # what OpenMP's passive wait would change for the app's model
            runs.append(("sscase_unet", PASSIVE_VARIANT, thread_env(args.threads, True)))
        for model, variant, model_env in runs:
            print(f"forward: {model} ({variant}) ...", flush=True)
            tta = (model, variant) == ("sscase_unet", "optimized")
            spec = {**job, "model": model, "variant": variant, "tta": tta}
            results["forward"].append(run_worker("forward", spec, model_env))
    if "server" in parts:
        print("server: start-up, path, load ...", flush=True)
        workdir = Path(tempfile.mkdtemp(prefix="sscase-bench-server-"))
        try:
            results["server"] = measure_server(plan, args.threads, env, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    if "train" in parts:
        print("training: one epoch per stage ...", flush=True)
        results["train"] = run_worker("train", job, env)
    results["loadavg_end"] = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    results["elapsed_minutes"] = (time.monotonic() - began) / 60
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    section = report(results)
    print()
    print(section)
    if not args.no_results and (args.write_results or not args.quick):
        write_section(SECTION_TITLE, section, "bench/run.py")
        print(f"\nupdated {RESULTS_FILE.relative_to(REPO_ROOT)} (section {SECTION_TITLE!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
