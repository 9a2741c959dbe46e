"""What every benchmark script shares: where things are, timing, memory, the machine, and the one RESULTS.md writer.

Each ``bench/*.py`` script measures one thing and owns one ``## `` section of ``bench/RESULTS.md``; it writes only
the generated part of that section, between its markers, with :func:`write_section` (hand-written text after the
end marker is kept).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_FILE = REPO_ROOT / "bench" / "RESULTS.md"
RESULTS_HEADER = (
    "# sscase-monai benchmarks\n\nEach section says how it was measured and gives the commands that reproduce it.\n"
)
STARTER_MODEL = REPO_ROOT / "apps" / "sscase" / "starter" / "sscase_starter.pt"
HEAD_MODEL = REPO_ROOT / "apps" / "sscase" / "starter" / "hc18_head.pt"
HEAD_LABELS_CONF = '{"head": 1}'
"""``--conf labels`` for which the app serves :data:`HEAD_MODEL` (``apps/sscase/lib/configs/sscase.py``)."""
SAMPLE_DATA = REPO_ROOT / "sample-data"
SHARED_DATA = Path(os.environ.get("SSCASE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
INPUT_SIZE = 256
"""The network input side the speed benchmarks measure at (the method's)."""


@dataclass(frozen=True)
class Plan:
    """How much the speed benchmarks measure (``bench/run.py`` runs them all with one plan)."""

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


FULL = Plan(
    "full",
    ("sscase_unet", "sscase_unet_b0", "flexible_unet_b0", "monai_unet", "basic_unet"),
    3,
    30,
    10,
    20,
    30,
    8,
    10,
    64,
)
QUICK = Plan("quick", ("sscase_unet", "flexible_unet_b0", "monai_unet"), 2, 10, 3, 6, 10, 8, 3, 16)


def setup_logging() -> None:
    """Log INFO and above to stderr with time, level and logger name (every benchmark script's ``main``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def stats(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p95 (nearest rank), min and count of timings, in milliseconds."""
    values = sorted(seconds)
    if not values:
        return {"median_ms": math.nan, "p95_ms": math.nan, "min_ms": math.nan, "n": 0}
    p95 = values[max(0, math.ceil(0.95 * len(values)) - 1)]
    return {
        "median_ms": 1000 * statistics.median(values),
        "p95_ms": 1000 * p95,
        "min_ms": 1000 * values[0],
        "n": len(values),
    }


def time_calls(fn: Callable[[], Any], warmup: int, reps: int) -> list[float]:
    """Seconds of each of ``reps`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def time_loader_epoch(
    loader: Iterable[Mapping[str, Any]], dataset: Any, sampler: Any, epoch: int = 1
) -> tuple[int, float]:
    """One epoch of a training loader without training, as ``(images, seconds)``.

    Args:
        loader: the loader from ``build_train_loader``.
        dataset: its dataset (``set_epoch`` is called on it first, as the trainer does).
        sampler: its sampler (likewise).
        epoch: the epoch to set.

    Returns:
        The images the loader gave and the seconds it took.
    """
    dataset.set_epoch(epoch)
    sampler.set_epoch(epoch)
    images, start = 0, time.perf_counter()
    for batch in loader:
        images += batch["image"].shape[0]
    return images, time.perf_counter() - start


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB.

    ``VmHWM`` of ``/proc/self/status``: it starts afresh with the new address space of ``exec``, while
    ``getrusage``'s ``ru_maxrss`` keeps the forking parent's peak (a worker would report the bench's own memory).
    """
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024.0
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def thread_env(threads: int, passive: bool) -> dict[str, str]:
    """Environment of every process a bench starts: its torch threads, and the OpenMP wait policy if asked."""
    env = {"OMP_NUM_THREADS": str(threads)}
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def run_worker(
    script: Path, kind: str, job: Mapping[str, Any], env: Mapping[str, str], timeout: float = 900.0
) -> dict[str, Any]:
    """Run ``script --worker KIND JOB OUT`` in a fresh interpreter (its own memory peak, nothing cached from another
    measurement) and return the JSON it wrote to ``OUT``."""
    with tempfile.TemporaryDirectory(prefix="sscase-bench-") as tmp:
        result = Path(tmp) / "result.json"
        env = {**os.environ, **env, "PYTHONWARNINGS": "ignore"}
        command = [sys.executable, str(Path(script).resolve()), "--worker", kind, json.dumps(job), str(result)]
        done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0 or not result.is_file():
            raise RuntimeError(f"worker {kind} {job.get('model', '')} failed:\n{done.stderr[-3000:]}")
        return json.loads(result.read_text())


def serve_worker(workers: Mapping[str, Callable[[dict[str, Any]], Any]], kind: str, job: str, out: str) -> int:
    """The worker side of :func:`run_worker`: run ``workers[kind]`` on the JSON job, write its result to ``out``
    (``-``: the worker talks on stdin/stdout itself)."""
    result = workers[kind](json.loads(job))
    if out != "-":
        Path(out).write_text(json.dumps(result))
    return 0


def speed_main(
    doc: str,
    workers: Mapping[str, Callable[[dict[str, Any]], Any]],
    measure: Callable[[Plan, int, dict[str, str]], Any],
    report: Callable[[Any, Plan], list[str]],
    argv: Sequence[str] | None = None,
) -> int:
    """The command line every speed benchmark shares: ``--quick`` (:data:`QUICK` instead of :data:`FULL`),
    ``--threads``, ``--omp-passive`` and the hidden ``--worker`` of :func:`run_worker`; prints ``report``'s lines.

    ``doc`` is the script's module docstring; its first paragraph is the ``--help`` description."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--omp-passive", action="store_true", help="OMP_WAIT_POLICY=PASSIVE in every measured process")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "JOB", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return serve_worker(workers, *args.worker)
    plan = QUICK if args.quick else FULL
    result = measure(plan, args.threads, thread_env(args.threads, args.omp_passive))
    print("\n".join(report(result, plan)))
    return 0


def load_average() -> float:
    """The 1-minute load average (NaN where unknown)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return math.nan


def machine() -> dict[str, Any]:
    """CPU, cores, memory, OS and the versions that matter, plus this process's torch threads."""
    import monai
    import monailabel
    import psutil
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "monailabel": monailabel.__version__,
        "cuda": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
    }


def fmt(value: Any, digits: int = 1) -> str:
    """A table cell: ``n/a`` for None/NaN, floats with ``digits`` decimals."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markers(script: str) -> tuple[str, str]:
    """The begin/end markers around ``script``'s generated text in RESULTS.md."""
    return (
        f"<!-- begin: generated by {script}; edits between these markers are overwritten -->",
        f"<!-- end: generated by {script} -->",
    )


def write_section(title: str, generated: str, script: str, path: Path = RESULTS_FILE) -> None:
    """Put ``generated`` under the ``## title`` section of ``path`` between ``script``'s markers.

    The section is added at the end when missing. Inside it, only the text between the markers (or, the first time,
    the whole section up to the next ``## `` heading) is replaced: hand-written notes after the end marker stay.
    The file is replaced atomically.

    Args:
        title: the section heading without ``## ``.
        generated: the measured text (tables, commands).
        script: the writing script's path relative to the repository (``bench/run.py``), named in the markers.
        path: the results file.
    """
    begin, end = markers(script)
    heading = f"## {title}"
    block = f"{begin}\n\n{generated.strip()}\n\n{end}\n"
    text = path.read_text() if path.is_file() else RESULTS_HEADER
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        text = f"{text.rstrip()}\n\n{heading}\n\n{block}"
    else:
        stop = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        body = "".join(lines[start + 1 : stop])
        notes = body.split(end, 1)[1].strip() if begin in body and end in body else ""
        body = f"\n{block}" + (f"\n{notes}\n" if notes else "")
        tail = "".join(lines[stop:])
        text = "".join(lines[: start + 1]) + body + (f"\n{tail}" if tail else "")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
