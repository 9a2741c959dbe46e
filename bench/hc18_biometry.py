"""Head circumference on HC18 vs the challenge's reference, from ground-truth masks and from a model (issue #14).

The HC of an image is :func:`sscase_monai.biometry.ellipse_circumference_mm` of its head mask (the Ramanujan perimeter
of the ellipse with the mask's second moments), as ``sscase-monai evaluate`` reports it; the reference is the
``head_circumference_mm`` column of the split's ``pixel_size_and_hc.csv`` (the perimeter of the annotated ellipse).

- (a) ground-truth masks: the estimator's floor (how far an ellipse fit on the filled annotation is from the
  annotation's own ellipse);
- (b) a trained model's masks (``--model``), predicted on each image's original grid.

Both come from one call of the library's evaluation, :func:`sscase_monai.evaluation.evaluate_model` with
``reference_hc`` (the code behind ``sscase-monai evaluate --reference-csv``), whose :func:`hc_agreement` holds the
mean absolute differences. Results: ``OUT/result.json`` and the section "Head circumference on HC18 (issue #14)" of
``bench/RESULTS.md``.

Example (from the repository root)::

    flock /work/heavy.lock .venv/bin/python bench/hc18_biometry.py --model runs/hc18/model.pt \\
        --train-command "sscase-monai train ..."
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from common import RESULTS_FILE, SHARED_DATA, fmt, load_average, machine, write_section  # noqa: E402

from sscase_monai.data import pair_images_with_labels  # noqa: E402
from sscase_monai.evaluation import evaluate_model, read_pixel_size_csv, read_reference_csv  # noqa: E402
from sscase_monai.inference import Predictor  # noqa: E402

logger = logging.getLogger("hc18_biometry")

SECTION_TITLE = "Head circumference on HC18 (issue #14)"
SCRIPT = "bench/hc18_biometry.py"
OUT_DEFAULT = REPO_ROOT / "bench" / "out" / "hc18_biometry"


def measure(model: Path, data: Path, split: str, tta: bool) -> dict[str, Any]:
    """Evaluate ``model`` on ``data/split`` with the split's reference HCs; the library does every measurement."""
    folder = data / split
    table = folder / "pixel_size_and_hc.csv"
    pairs = pair_images_with_labels(folder / "images", folder / "labels")
    predictor = Predictor.from_file(model, device="cpu", tta=tta)
    start = time.perf_counter()
    result = evaluate_model(
        predictor,
        pairs,
        tta=tta,
        spacing_lookup=read_pixel_size_csv(table),
        reference_hc=read_reference_csv(table),
    )
    seconds = time.perf_counter() - start
    hc_columns = ("name", "hc_mm", "label_hc_mm", "reference_hc_mm", "hc_abs_diff_mm", "label_hc_abs_diff_mm")
    per_image = [{k: r.get(k) for k in hc_columns} for r in result.records]
    worst = sorted(per_image, key=lambda r: -(r["hc_abs_diff_mm"] or 0.0))[:3]
    return {
        "split": split,
        "images": len(result.records),
        "model": str(model),
        "spec": {"input_size": predictor.spec.input_size, "labels": predictor.spec.labels},
        "tta": tta,
        "dice_mean": float(result.metrics["mean"]["dice"]),
        "hc": result.hc_reference,
        "relative_abs_diff_pct": {
            source: float(
                np.mean(
                    [
                        abs(r[column] - r["reference_hc_mm"]) / r["reference_hc_mm"] * 100
                        for r in per_image
                        if r[column] is not None and r["reference_hc_mm"] is not None
                    ]
                )
            )
            for source, column in (("prediction", "hc_mm"), ("ground_truth", "label_hc_mm"))
        },
        "worst_predictions": worst,
        "seconds": round(seconds, 1),
        "per_image": per_image,
    }


def render(result: dict[str, Any], command: str, train_command: str, train_note: str) -> str:
    hc = result["hc"]
    rows = []
    for source, what in (
        ("ground_truth", "(a) ground-truth masks (the estimator's floor)"),
        ("prediction", f"(b) model masks (per-image Dice {100 * result['dice_mean']:.2f}%)"),
    ):
        values = hc[source]
        rows.append(
            f"| {what} | {hc['n']} | {fmt(values['mean_abs_diff_mm'], 2)} | "
            f"{fmt(result['relative_abs_diff_pct'][source], 2)} | {fmt(values['mean_diff_mm'], 2)} | "
            f"{fmt(values['max_abs_diff_mm'], 2)} |"
        )
    worst = ", ".join(
        f"{r['name']} {r['hc_abs_diff_mm']:.1f} mm (ground truth {r['label_hc_abs_diff_mm']:.1f} mm)"
        for r in result["worst_predictions"]
    )
    env = result["machine"]
    return "\n".join(
        [
            f"HC18 `{result['split']}` ({result['images']} images, pixel sizes and reference HC from its "
            "`pixel_size_and_hc.csv`). HC = Ramanujan perimeter of the ellipse with the head mask's second moments "
            "(`biometry.ellipse_circumference_mm`), computed by `evaluation.evaluate_model(..., reference_hc=...)`, "
            "the code of `sscase-monai evaluate --reference-csv`; masks on each image's original grid"
            + (", with test-time augmentation" if result["tta"] else ", no test-time augmentation")
            + ". Difference = measured - reference.",
            "",
            "| masks | images | mean abs. diff (mm) | mean abs. diff (% of HC) | mean diff (mm) | max abs. diff (mm) |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"Largest model errors: {worst}.",
            "",
            f"Model: {train_note}",
            "",
            f"Training command: `{train_command}`  " if train_command else "",
            f"Measurement command: `{command}`",
            "",
            f"Machine: {env['cpu']}, {env['cores']} cores, torch {env['torch']}, {env['threads']} threads; "
            f"evaluation {result['seconds']:.0f} s, load average {result['load_average']:.1f} at the start.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="trained HC18 model (model.pt + model.json)")
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "hc18", help="HC18 folder (train/val/...)")
    parser.add_argument("--split", default="val", help="split to measure (default: val)")
    parser.add_argument("--tta", action="store_true", help="predict with test-time augmentation")
    parser.add_argument("--train-command", default="", help="the command that trained --model (for the record)")
    parser.add_argument("--train-note", default="", help="one sentence on the model's training (for the record)")
    parser.add_argument("--out", type=Path, default=OUT_DEFAULT, help="folder for result.json")
    parser.add_argument("--results", type=Path, default=RESULTS_FILE, help="RESULTS.md to update")
    parser.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    load = load_average()
    result = measure(args.model, args.data, args.split, args.tta)
    result["machine"] = machine()
    result["load_average"] = load
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    shown = ["--model", str(args.model), "--data", str(args.data), "--split", args.split] + (
        ["--tta"] if args.tta else []
    )
    command = "flock /work/heavy.lock .venv/bin/python " + " ".join([SCRIPT, *map(shlex.quote, shown)])
    text = render(result, command, args.train_command, args.train_note or str(args.model))
    print(text)
    if not args.no_results:
        write_section(SECTION_TITLE, text, SCRIPT, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
