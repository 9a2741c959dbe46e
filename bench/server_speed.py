"""The server path as Slicer uses it: ``POST /infer/sscase`` round trips, their overhead over a bare forward, the
server under several clients at once, its memory, and start-up to the first answer.

A real ``sscase-monai serve`` on 127.0.0.1 (``sscase_monai.server_process``) with the starter model and a copy of the
sample data plus an 800x540 PNG (an HC18 scan when ``../shared/data`` is there) and a 512x512x1 NIfTI; Slicer's
``monailabel`` client with Slicer's parameters; a twin process runs the bare forward of the same model on the same
preprocessed image right after each request, so that both see the same load. Then a second server serving the
fetal-head label (``--conf labels '{"head": 1}'``: the bundled HC18 head model, input 256x384) runs the PNG upload the
same way: the Run time a sonographer measuring HC waits for.

Usage: ``.venv/bin/python bench/server_speed.py [--quick]``; ``bench/run.py`` runs it with the other speed benchmarks.
"""

from __future__ import annotations

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
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from common import (  # noqa: E402  (bench/common.py)
    HEAD_LABELS_CONF,
    HEAD_MODEL,
    SAMPLE_DATA,
    SHARED_DATA,
    STARTER_MODEL,
    Plan,
    fmt,
    speed_main,
    stats,
)
from monailabel.client import MONAILabelClient  # noqa: E402

from sscase_monai.server_process import ServerProcess, copy_studies  # noqa: E402

SLICER_PARAMS = {"result_extension": ".nrrd", "result_dtype": "uint8"}  # what Slicer's MONAI Label module asks for


def worker_bare(job: dict[str, Any]) -> None:
    """Bare forwards on request: the app's model (``job["model"]``), loaded and optimised as the app does, on an image
    preprocessed as the app does (the model's own preprocessing); each line on stdin runs one forward of the named
    input and answers its seconds on stdout."""
    import torch
    from monai.transforms import Compose

    from sscase_monai.inference import ProbabilityInferer, optimize_for_inference
    from sscase_monai.model_files import load_model

    torch.set_num_threads(job["threads"])
    network, spec = load_model(job["model"])
    network = optimize_for_inference(network, inplace=True)
    preprocess = Compose(spec.build_preprocess(keys=("image",)))
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

    def __init__(self, model: Path, inputs: dict[str, Path], threads: int, env: dict[str, str]) -> None:
        job = {"model": str(model), "threads": threads, "inputs": {name: str(path) for name, path in inputs.items()}}
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


def start_server(
    studies: Path, workdir: Path, env: dict[str, str], conf: Sequence[tuple[str, str]] = ()
) -> ServerProcess:
    """Start ``sscase-monai serve``, timed to the first answered ``/info/`` (polled every 50 ms)."""
    server = ServerProcess(studies, workdir, conf=conf, env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false", **env})
    return server.start(timeout=300, poll_interval=0.05)


def slicer_client(server: ServerProcess) -> MONAILabelClient:
    """The ``monailabel`` client Slicer's module embeds, with its default temp folder."""
    return MONAILabelClient(server.url)


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
    studies = copy_studies(SAMPLE_DATA, workdir / "studies")
    inputs = make_inputs(workdir / "inputs")
    shutil.copyfile(inputs["png"], studies / "bench_png.png")
    shutil.copyfile(inputs["nifti"], studies / "bench_nifti.nii.gz")
    server = start_server(studies, workdir / "server", env)
    out: dict[str, Any] = {"startup_seconds": server.startup_seconds, "png_source": inputs["png_source"]}
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
            out["path"] = measure_path(client, STARTER_MODEL, cases, inputs, plan, threads, env)
            memory.phase = "load"
            out["load"] = measure_load(server, plan, inputs)
        out["server_rss_mb"] = memory.peaks
        log = server.log_path.read_text(errors="replace")
        # SSCASEInfer logs "infer model <path> loaded on <device>" whenever it (re)loads a model file
        out["model_loads"] = sum("infer model " in line and " loaded on " in line for line in log.splitlines())
    finally:
        server.stop()
    out["head_path"] = measure_head_path(studies, workdir, inputs, plan, threads, env)
    return out


def measure_path(
    client: Any,
    model: Path,
    cases: dict[str, tuple[str, Path | None, str]],
    inputs: dict[str, Any],
    plan: Plan,
    threads: int,
    env: dict[str, str],
) -> dict[str, Any]:
    """Each case (label: image id, uploaded file, input name) ``plan.requests`` times after 2 warm-ups, a bare forward
    of ``model`` right after each request."""
    out = {}
    # the server runs with `sscase-monai serve`'s OpenMP wait policy (PASSIVE unless set): so does its twin
    bare_env = {**env, "OMP_WAIT_POLICY": env.get("OMP_WAIT_POLICY", "PASSIVE")}
    bare = BareForward(model, {"png": inputs["png"], "nifti": inputs["nifti"]}, threads, bare_env)
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
            out[label] = {
                "round_trip": stats(times),
                "bare_forward": stats(bare_times),
                "server": stage_latencies(params),
            }
    finally:
        bare.close()
    return out


def measure_head_path(
    studies: Path, workdir: Path, inputs: dict[str, Any], plan: Plan, threads: int, env: dict[str, str]
) -> dict[str, Any]:
    """The PNG upload on a server serving the fetal-head label (the bundled HC18 head model)."""
    server = start_server(studies, workdir / "server-head", env, conf=[("labels", HEAD_LABELS_CONF)])
    try:
        cases = {"PNG 800x540, uploaded, fetal-head model (256x384)": ("", inputs["png"], "png")}
        return measure_path(slicer_client(server), HEAD_MODEL, cases, inputs, plan, threads, env)
    finally:
        server.stop()


def measure_load(server: Any, plan: Plan, inputs: dict[str, Any]) -> dict[str, Any]:
    """``load_clients`` Slicer clients at once, each running ``load_infers`` uploads (PNG and NIfTI alternately)."""
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


def server_overhead(path: dict[str, Any]) -> float:
    """Round-trip median minus the bare forward's median measured between the same requests (ms)."""
    return path["round_trip"]["median_ms"] - path["bare_forward"]["median_ms"]


def server_rows(server: dict[str, Any]) -> list[str]:
    rows = [
        "| input (Slicer's params: .nrrd, uint8) | round trip median / p95 (ms) | bare forward median (ms) | "
        "overhead (ms) | server total | load / resize / median | inferer | restore | write (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in {**server["path"], **server.get("head_path", {})}.items():
        s = r["server"]
        rows.append(
            f"| {label} | {r['round_trip']['median_ms']:.0f} / {r['round_trip']['p95_ms']:.0f} | "
            f"{r['bare_forward']['median_ms']:.0f} | {server_overhead(r):.0f} | {s['total']:.0f} | "
            f"{s.get('pre:LoadUltrasoundd', math.nan):.1f} / {s.get('pre:ResizeToInputd', math.nan):.1f} / "
            f"{s.get('pre:MedianDenoised', math.nan):.1f} | {s['infer']:.0f} | "
            f"{s.get('post:RestoreToOriginald', math.nan):.1f} | {s['write']:.0f} |"
        )
    return rows


def measure(plan: Plan, threads: int, env: dict[str, str]) -> dict[str, Any]:
    """Start-up, the request path and the load test in a fresh working folder (removed afterwards)."""
    print("server: start-up, path, load ...", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="sscase-bench-server-"))
    try:
        return measure_server(plan, threads, env, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def report_lines(server: dict[str, Any], plan: dict[str, Any]) -> list[str]:
    """The server path, start-up and load tables with how they were measured."""
    lines: list[str] = []
    if server:
        load = server["load"]
        rss = server["server_rss_mb"]
        lines += [
            "### Server path (`POST /infer/sscase`)",
            "",
            "A real `sscase-monai serve` on 127.0.0.1 (starter model; the last row: a second server for "
            "`--conf labels '{\"head\": 1}'`, the bundled fetal-head model; studies = a copy of `sample-data/` + "
            f"the two inputs), Slicer's `monailabel` client, {plan['requests']} requests per input after 2 warm-ups. "
            f"PNG: {server['png_source']}; NIfTI: synthetic. Bare forward: the same model loaded and optimised as the "
            "app does, on the same image preprocessed as the app does (1x3x256x256; the head model 1x3x256x384), one "
            "forward right after each request in a separate process with the same threads, so that both see the same "
            "load; overhead = round-trip median - bare-forward median. Stage columns: medians of what the server "
            "reports per request "
            "(`latencies`; transforms to 0.1 ms, the others rounded by MONAI Label to 10 ms).",
            "",
            *server_rows(server),
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
    return lines


WORKERS = {"bare": worker_bare}


def main(argv: Sequence[str] | None = None) -> int:
    def report(result: dict[str, Any], plan: Plan) -> list[str]:
        return report_lines(result, asdict(plan))

    return speed_main(__doc__, WORKERS, measure, report, argv)


if __name__ == "__main__":
    sys.exit(main())
