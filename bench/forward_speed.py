"""Model forward latency and memory at 256x256 on the CPU, side by side with MONAI's networks, and TTA's cost.

SS_CASE_UNet (the app's starter model, EfficientNet-Lite0 encoder; and with the paper's B0 encoder) vs MONAI
``FlexibleUNet(backbone="efficientnet-b0")``, a plain MONAI ``UNet`` and MONAI ``BasicUNet``: parameters, GMACs,
median/p95 latency at batch 1 and 8, peak RSS. Each model runs in a fresh subprocess, once as plain eager eval
(``eager``) and once as the app runs it (``optimized``: ``optimize_for_inference``); the app's model also with
``OMP_WAIT_POLICY=PASSIVE``, and with test-time augmentation / without (``ProbabilityInferer``).

Usage: ``.venv/bin/python bench/forward_speed.py [--quick]`` prints the tables; ``bench/run.py`` runs it with the
other speed benchmarks and writes ``bench/RESULTS.md``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from common import (  # noqa: E402  (bench/common.py)
    INPUT_SIZE,
    STARTER_MODEL,
    Plan,
    fmt,
    peak_rss_mb,
    run_worker,
    speed_main,
    stats,
    thread_env,
    time_calls,
)

MODELS: dict[str, str] = {
    "sscase_unet": "SS_CASE_UNet, Lite0 encoder (the app's starter model)",
    "sscase_unet_b0": "SS_CASE_UNet, B0 encoder (the paper's)",
    "flexible_unet_b0": 'MONAI FlexibleUNet(backbone="efficientnet-b0")',
    "monai_unet": "MONAI UNet (16-256 channels, 2 residual units)",
    "basic_unet": "MONAI BasicUNet (default features)",
}


PASSIVE_VARIANT = "optimized, OMP passive"


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


def measure(plan: Plan, threads: int, env: dict[str, str], passive_row: bool = True) -> list[dict[str, Any]]:
    """Every model of the plan, eager and optimised, each in a fresh process (plus the app's model with passive
    OpenMP wait unless ``env`` already has it)."""
    job = {"threads": threads, "plan": asdict(plan)}
    runs = [(model, variant, env) for model in plan.models for variant in ("eager", "optimized")]
    if passive_row and env.get("OMP_WAIT_POLICY") != "PASSIVE":  # what passive wait changes for the app's model
        runs.append(("sscase_unet", PASSIVE_VARIANT, thread_env(threads, True)))
    results = []
    for model, variant, model_env in runs:
        print(f"forward: {model} ({variant}) ...", flush=True)
        tta = (model, variant) == ("sscase_unet", "optimized")
        spec = {**job, "model": model, "variant": variant, "tta": tta}
        results.append(run_worker(Path(__file__), "forward", spec, model_env))
    return results


def forward_rows(forward: Sequence[dict[str, Any]]) -> list[str]:
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


def report_lines(forward: Sequence[dict[str, Any]]) -> list[str]:
    """The forward and TTA tables with how they were measured."""
    lines = [
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
        *forward_rows(forward),
        "",
    ]
    tta = next((r.get("tta") for r in forward if r.get("tta")), None)
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
    return lines


WORKERS = {"forward": worker_forward}


def main(argv: Sequence[str] | None = None) -> int:
    return speed_main(__doc__, WORKERS, measure, lambda result, plan: report_lines(result), argv)


if __name__ == "__main__":
    sys.exit(main())
