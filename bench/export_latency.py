"""Exported graphs vs PyTorch: agreement on real images and CPU latency at 256x256, in one run (issue #13).

For each model (the bundled starter SS_CASE_UNet, and the PSFHS 3-class model of ``bench/psfhs_accuracy.py`` when
it exists, or any ``--model``), the script

1. exports it with ``sscase_monai.export`` to ONNX (opset 18) and TorchScript (traced, frozen);
2. checks both against PyTorch with ``export.check_export`` on real images through the model's own preprocessing
   (HC18 ``val`` for the starter, the held-out PSFHS split for the PSFHS model): max and mean absolute probability
   difference, mask Dice;
3. times one forward pass to probabilities on a batch of those preprocessed images, batch 1 and 8, for
   PyTorch as the library runs it (``Predictor.predict_batch``: ``optimize_for_inference``, channels-last),
   ONNX Runtime (CPU provider, ``intra_op_num_threads`` = torch's threads, ``inter_op_num_threads`` 1, default
   graph optimisations) and TorchScript (``torch.jit.load``), taking turns in rounds (each engine's block warmed
   up first) so that load from other jobs hits all three alike. Ratios are against PyTorch in the same run.

Results: ``OUT/result.json`` and the section "Export: ONNX Runtime and TorchScript vs PyTorch (issue #13)" of
``bench/RESULTS.md``.

Example (from the repository root)::

    flock /work/heavy.lock .venv/bin/python bench/export_latency.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from common import (  # noqa: E402  (bench/common.py)
    RESULTS_FILE,
    SHARED_DATA,
    STARTER_MODEL,
    fmt,
    load_average,
    machine,
    setup_logging,
    stats,
    time_calls,
    write_section,
)

from sscase_monai import export  # noqa: E402
from sscase_monai.data import find_images  # noqa: E402
from sscase_monai.inference import Predictor  # noqa: E402
from sscase_monai.model_files import read_spec  # noqa: E402
from sscase_monai.transforms import format_input_size  # noqa: E402

logger = logging.getLogger("export_latency")

SECTION_TITLE = "Export: ONNX Runtime and TorchScript vs PyTorch (issue #13)"
SCRIPT = "bench/export_latency.py"
PSFHS_MODEL = REPO_ROOT / "bench" / "out" / "psfhs" / "sscase_unet" / "run" / "model.pt"
PSFHS_RESULT = REPO_ROOT / "bench" / "out" / "psfhs" / "sscase_unet" / "result.json"
ENGINES = ("pytorch", "onnxruntime", "torchscript")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, action="append", help="model(s) to export (default: starter + PSFHS)")
    parser.add_argument("--images", type=Path, help="check/timing images for every --model (default: see doc)")
    parser.add_argument("--check-images", type=int, default=16, help="real images per agreement check (16)")
    parser.add_argument("--batch", type=int, action="append", help="batch sizes to time (1 and 8)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every engine in turn (3)")
    parser.add_argument("--calls", type=int, default=10, help="timed calls per engine and round (10; batch 8: 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per engine first (3)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads (2)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "out" / "export", help="output folder")
    parser.add_argument("--results", type=Path, default=RESULTS_FILE, help="Markdown file to update")
    args = parser.parse_args(argv)
    args.batch = args.batch or [1, 8]
    if args.model is None:
        args.model = [STARTER_MODEL] + ([PSFHS_MODEL] if PSFHS_MODEL.is_file() else [])
    return args


def real_images(model: Path, args: argparse.Namespace) -> tuple[list[Path], str]:
    """The images a model is checked and timed on, and how to name them."""
    if args.images is not None:
        return find_images(args.images)[: args.check_images], str(args.images)
    if model == PSFHS_MODEL and PSFHS_RESULT.is_file():
        names = json.loads(PSFHS_RESULT.read_text())["split"]["test"]
        images = [SHARED_DATA / "psfhs" / "images" / name for name in names]
        return images[: args.check_images], f"PSFHS held-out split (first {min(len(images), args.check_images)})"
    folder = SHARED_DATA / "hc18" / "val" / "images"
    return find_images(folder)[: args.check_images], f"HC18 val (first {args.check_images})"


def time_engines(engines: dict[str, Any], batch: torch.Tensor, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median/p95/min ms of each engine on ``batch``: ``rounds`` x (each engine: warm-up, then ``calls`` timed).

    Engines take turns in blocks, not call by call: ONNX Runtime's and OpenMP's worker threads spin-wait after
    each call, and a call of one engine right after the other's ran 4-6x slower (measured), timing the handover.
    """
    calls = args.calls if len(batch) == 1 else max(1, args.calls // 2)
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, engine in engines.items():
            times[name] += time_calls(lambda engine=engine: engine(batch), args.warmup, calls)
    return {name: stats(values) for name, values in times.items()}


def run_model(model: Path, args: argparse.Namespace) -> dict[str, Any]:
    spec = read_spec(model)
    out = args.out / model.parent.name
    images, source = real_images(model, args)
    record: dict[str, Any] = {"model": str(model.relative_to(REPO_ROOT)), "spec": spec.to_dict(), "source": source}
    paths, exports = {}, {}
    writers = (("onnx", export.export_onnx, ".onnx"), ("torchscript", export.export_torchscript, ".ts"))
    for format, write, suffix in writers:
        start = time.perf_counter()
        paths[format] = write(model, out / f"model{suffix}")
        exports[format] = {"seconds": time.perf_counter() - start, "mb": paths[format].stat().st_size / 1e6}
    record["exports"] = exports
    onnx_model = export.OnnxModel(paths["onnx"], threads=args.threads)
    torchscript_model = export.TorchScriptModel(paths["torchscript"])
    checks = {}
    for format, loaded in (("onnx", onnx_model), ("torchscript", torchscript_model)):
        check = export.check_export(model, loaded, images, source=source)
        checks[format] = {**dataclasses.asdict(check), "passed": check.passed()}
        logger.info("%s %s: %s", model.parent.name, format, check.summary())
    record["checks"] = checks

    predictor = Predictor.from_file(model, device="cpu")
    inputs = torch.stack([predictor.load_image(image)[0] for image in images])
    engines = {
        "pytorch": lambda x: predictor.predict_batch(x),
        "onnxruntime": lambda x: onnx_model(x.numpy()),
        "torchscript": lambda x: torchscript_model(x),
    }
    timings = {}
    for batch_size in args.batch:
        batch = inputs[:batch_size]
        if len(batch) < batch_size:
            batch = inputs.repeat(-(-batch_size // len(inputs)), 1, 1, 1)[:batch_size]
        load_start = load_average()
        timings[str(batch_size)] = {"engines": time_engines(engines, batch, args), "load": [load_start, load_average()]}
        logger.info("%s batch %d: %s", model.parent.name, batch_size, timings[str(batch_size)])
    record["timings"] = timings
    return record


def render(result: dict[str, Any]) -> str:
    host = result["machine"]
    lines = [
        f"Measured {result['finished'][:10]} on {host['cpu']}, {host['cores']} cores (torch {host['torch']}, ONNX "
        f"Runtime {result['onnxruntime']}, onnx {result['onnx']}); torch and ONNX Runtime both on {result['threads']} "
        "threads (ONNX Runtime: CPU provider, intra-op threads = torch's, inter-op 1, default graph optimisations; "
        "OpenMP's default wait policy). One forward pass of preprocessed images to probabilities at each model's "
        "input size (the starter's, the app's default: 256x256); the engines "
        f"take turns, {result['rounds']} rounds of a warmed-up block each, so load from other jobs hits them alike "
        "(load average per batch below).",
        "",
        f"Command: `{result['command']}`",
        "",
        "### Latency",
        "",
        "| model | batch | engine | median (ms) | p95 (ms) | min (ms) | ms per image | vs PyTorch (median) | "
        "load avg start/end |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["models"]:
        for batch, timing in r["timings"].items():
            base = timing["engines"]["pytorch"]["median_ms"]
            for engine in ENGINES:
                s = timing["engines"][engine]
                lines.append(
                    f"| {r['title']} | {batch} | {engine} | {fmt(s['median_ms'])} | {fmt(s['p95_ms'])} | "
                    f"{fmt(s['min_ms'])} | {fmt(s['median_ms'] / int(batch))} | {s['median_ms'] / base:.2f}x | "
                    f"{timing['load'][0]:.1f} / {timing['load'][1]:.1f} |"
                )
    lines += [
        "",
        "PyTorch = `Predictor.predict_batch` (the library's and the server's path: `optimize_for_inference`, "
        "channels-last on the CPU). vs PyTorch < 1 is faster.",
        "",
        "### Agreement with PyTorch on real images",
        "",
        "| model | format | images | max abs prob. diff | mean abs prob. diff | mask Dice | pixels differing | "
        "export (s) | file (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["models"]:
        for format, c in r["checks"].items():
            e = r["exports"][format]
            lines.append(
                f"| {r['title']} | {format} | {c['images']} ({c['source']}) | {c['max_abs_diff']:.1e} | "
                f"{c['mean_abs_diff']:.1e} | {c['dice']:.6f} | {c['differing_pixels']} of {c['pixels']} | "
                f"{e['seconds']:.0f} | {e['mb']:.1f} |"
            )
    lines += [
        "",
        "Each image through the model's own preprocessing (`Predictor.load_image`); masks compared at the network's "
        "size (Dice pooled over the images, mean over foreground classes). ONNX: opset 18, dynamic batch; both "
        "graphs output probabilities (sigmoid for one channel, softmax otherwise).",
    ]
    return "\n".join(lines) + "\n"


def _title(record: dict[str, Any]) -> str:
    spec = record["spec"]
    kind = "binary" if spec["out_channels"] == 1 else f"{spec['out_channels']} classes"
    model = REPO_ROOT / record["model"]
    name = {STARTER_MODEL: "starter", PSFHS_MODEL: "PSFHS"}.get(model, model.parent.name)
    return f"SS_CASE_UNet {name} ({kind}, {format_input_size(spec['input_size'])})"


def main(argv: Sequence[str] | None = None) -> int:
    import onnx
    import onnxruntime

    args = parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    os.chdir(REPO_ROOT)
    records = []
    for model in args.model:
        record = run_model(model.resolve(), args)
        record["title"] = _title(record)
        records.append(record)
    result = {
        "models": records,
        "machine": machine(),
        "threads": args.threads,
        "rounds": args.rounds,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": shlex.join([".venv/bin/python", SCRIPT, *(argv if argv is not None else sys.argv[1:])]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    write_section(SECTION_TITLE, render(result), SCRIPT, args.results)
    logger.info("updated %s", args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
