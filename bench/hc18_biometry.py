"""Head circumference on HC18 vs the challenge's reference: estimators side by side and the reliability flag
(issues #14 and #20).

Every HC is the library's (:func:`sscase_monai.biometry.measure_head`, which the app, ``predict`` and ``evaluate``
call through :func:`sscase_monai.biometry.measure_mask`); the reference is the ``head_circumference_mm`` column of
the split's ``pixel_size_and_hc.csv`` (the perimeter of the annotated ellipse). Estimators (``biometry.HC_METHODS``):
``moments`` (the ellipse with the mask's second moments), ``contour`` (least squares on the boundary), ``robust``
(RANSAC + least squares on the boundary points near its ellipse); boundary conventions: the half-pixel contour or
edge-pixel centres. Masks:

- (a) ground-truth masks: the estimator's floor;
- (a') the same masks corrupted as a model fails: a leak blob or a bite (a disc of 30 % of the head's mean semi-axis
  centred on its boundary), or the head cut by the image's left edge (20 % of its width cut off); the reference is
  unchanged (the head is the same);
- (b) a trained model's masks (``--model``), predicted on each image's original grid by
  :func:`sscase_monai.evaluation.evaluate_model` (the code of ``sscase-monai evaluate --reference-csv``).

The flag (``biometry.RELIABILITY_LIMITS``, :func:`sscase_monai.biometry.assess_head`) is scored by the share of
> 5 mm errors it flags and the share of good (<= 5 mm) measurements it flags wrongly, per check at several limits.
Results: ``OUT/result.json`` and the section "Head circumference on HC18 (issue #14)" of ``bench/RESULTS.md``.

Example (from the repository root)::

    nice -n 5 .venv/bin/python bench/hc18_biometry.py --model runs/hc18/model.pt --data ../shared/data/hc18 --split val
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from common import RESULTS_FILE, SHARED_DATA, fmt, load_average, machine, setup_logging, write_section  # noqa: E402

from sscase_monai import biometry, io  # noqa: E402
from sscase_monai.data import pair_images_with_labels  # noqa: E402
from sscase_monai.evaluation import (  # noqa: E402
    HC_ERROR_LIMIT_MM,
    evaluate_model,
    read_label,
    read_pixel_size_csv,
    read_reference_csv,
)
from sscase_monai.inference import Predictor  # noqa: E402

logger = logging.getLogger("hc18_biometry")

SECTION_TITLE = "Head circumference on HC18 (issue #14)"
SCRIPT = "bench/hc18_biometry.py"
OUT_DEFAULT = REPO_ROOT / "bench" / "out" / "hc18_biometry"
LABELS_NOTE = "labels regenerated 2026-12-04 (filled to the outline's centre line, see the data's README)"

Estimator = tuple[str, str, float]
"""``(method, boundary, robust tolerance)`` of :func:`sscase_monai.biometry.measure_head`."""

CHOSEN: Estimator = (biometry.HC_METHOD, biometry.HC_BOUNDARY, biometry.ROBUST_TOLERANCE_RELATIVE)
TOLERANCES: tuple[float, ...] = (0.02, 0.03, 0.04, 0.06)
"""The robust fit's relative tolerances compared on model masks."""

GROUND_TRUTH_ESTIMATORS: tuple[Estimator, ...] = tuple(
    dict.fromkeys(
        [
            ("moments", "contour", CHOSEN[2]),
            ("contour", "contour", CHOSEN[2]),
            ("contour", "centres", CHOSEN[2]),
            ("robust", "contour", CHOSEN[2]),
            ("robust", "centres", CHOSEN[2]),
            CHOSEN,
        ]
    )
)
"""Compared on ground-truth masks (both boundary conventions)."""

MODEL_ESTIMATORS: tuple[Estimator, ...] = tuple(
    dict.fromkeys(
        [("moments", "contour", CHOSEN[2]), ("contour", "contour", CHOSEN[2])]
        + [("robust", "contour", t) for t in TOLERANCES]
        + [CHOSEN]
    )
)
"""Compared on corrupted and model masks (the half-pixel contour)."""

DEFECT_SIZE = 0.3
"""Radius of a leak blob or a bite, as a share of the head's mean semi-axis."""

EDGE_CUT = 0.2
"""Share of the head's width the image edge cuts off."""

SWEEP: dict[str, tuple[float, ...]] = {
    "outside_share": (0.0, 0.02, 0.05, 0.1),
    "uncertainty_pct": (2.0, 3.0, 4.0, 5.0, 6.0, 8.0),
    "boundary_residual_pct": (1.0, 1.5, 2.0, 2.5, 3.0, 4.0),
    "inlier_residual_pct": (0.5, 0.75, 1.0, 1.5, 2.0),
    "outlier_share": (0.05, 0.1, 0.15, 0.2, 0.3),
    "mismatch_pct": (2.0, 3.0, 5.0, 6.0, 8.0),
    "other_parts_share": (0.01, 0.05, 0.1, 0.2),
}
"""Limits tried for each check alone (the others off)."""


@dataclass
class Case:
    """One mask to measure: its image's name, the mask, the pixel size, the reference HC (and the model's head
    probability)."""

    name: str
    mask: np.ndarray
    spacing: float
    reference: float
    probability: np.ndarray | None = None


def label_name(estimator: Estimator) -> str:
    method, boundary, tolerance = estimator
    if method == "moments":
        return method
    where = "half-pixel contour" if boundary == "contour" else "pixel centres"
    return f"{method} ({where})" if method == "contour" else f"{method} ({where}, tolerance {100 * tolerance:g} %)"


def corrupt(case: Case, defect: str, index: int) -> Case:
    """``case`` with a leak blob, a bite or an image-edge cut (deterministic: the position follows ``index``)."""
    fit = biometry.fit_ellipse(case.mask, 1.0)
    radius = DEFECT_SIZE * (fit.semi_major + fit.semi_minor) / 2
    if defect == "edge":
        cols = np.flatnonzero(case.mask.any(axis=0))
        cut = int(cols[0] + EDGE_CUT * (cols[-1] - cols[0]))
        return replace(case, mask=case.mask[:, cut:])
    angle = 2 * math.pi * ((index * 0.618034) % 1.0)
    (row, col), *_ = fit.boundary(720)[[int(angle / (2 * math.pi) * 720)]]
    rows, cols = np.indices(case.mask.shape)
    blob = (rows - row) ** 2 + (cols - col) ** 2 <= radius**2
    mask = case.mask.astype(bool)
    mask = mask | blob if defect == "leak" else mask & ~blob
    return replace(case, mask=mask.astype(np.uint8))


def measure_cases(cases: Sequence[Case], estimators: Sequence[Estimator]) -> list[dict[str, Any]]:
    """Per case and estimator the library's :class:`~sscase_monai.biometry.HeadMeasurement` (``None``: no head)."""
    rows = []
    for case in cases:
        row: dict[str, Any] = {"name": case.name, "reference": case.reference}
        for estimator in estimators:
            method, boundary, tolerance = estimator
            # the probability check costs two more fits: only for the product's estimator
            probability = case.probability if estimator == CHOSEN else None
            row[label_name(estimator)] = biometry.measure_head(
                case.mask, case.spacing, method=method, boundary=boundary, probability=probability, tolerance=tolerance
            )
        rows.append(row)
    return rows


def errors(rows: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    """HC - reference per case (NaN where no head was found)."""
    return np.array([r[key].circumference - r["reference"] if r[key] is not None else np.nan for r in rows])


def error_summary(diffs: np.ndarray) -> dict[str, Any]:
    found = diffs[np.isfinite(diffs)]
    absolute = np.abs(found)
    return {
        "n": int(len(found)),
        "missing": int(len(diffs) - len(found)),
        "mean_abs_mm": float(absolute.mean()) if len(found) else None,
        "mean_mm": float(found.mean()) if len(found) else None,
        "median_abs_mm": float(np.median(absolute)) if len(found) else None,
        "p90_abs_mm": float(np.percentile(absolute, 90)) if len(found) else None,
        "max_abs_mm": float(absolute.max()) if len(found) else None,
        "over_limit": int((absolute > HC_ERROR_LIMIT_MM).sum()),
    }


def flag_scores(
    rows: Sequence[dict[str, Any]], key: str, assess: Callable[[biometry.HeadMeasurement], biometry.HeadMeasurement]
) -> dict[str, Any]:
    """How a flag (``assess``: a measurement -> the same, assessed) splits bad (> 5 mm) from good measurements."""
    diffs = errors(rows, key)
    kept = [(abs(d), assess(r[key]).reliable) for r, d in zip(rows, diffs, strict=True) if np.isfinite(d)]
    bad = [ok for e, ok in kept if e > HC_ERROR_LIMIT_MM]
    good = [ok for e, ok in kept if e <= HC_ERROR_LIMIT_MM]
    unflagged = np.array([e for e, ok in kept if ok])
    return {
        "bad": len(bad),
        "bad_flagged": sum(not ok for ok in bad),
        "good": len(good),
        "good_flagged": sum(not ok for ok in good),
        "unflagged_mean_abs_mm": float(unflagged.mean()) if len(unflagged) else None,
        "unflagged_over_limit": int((unflagged > HC_ERROR_LIMIT_MM).sum()),
        "unflagged": int(len(unflagged)),
    }


def sweep(rows: Sequence[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """:func:`flag_scores` of each check alone at each limit of :data:`SWEEP` (the library's ``assess_head``)."""
    off = biometry.ReliabilityLimits(**dict.fromkeys(SWEEP, math.inf))
    results = []
    for check, limits in SWEEP.items():
        for limit in limits:
            chosen = replace(off, **{check: limit})
            scores = flag_scores(rows, key, lambda m, chosen=chosen: biometry.assess_head(m, chosen))
            results.append({"check": check, "limit": limit, **scores})
    return results


def ground_truth_cases(folder: Path) -> list[Case]:
    table = folder / "pixel_size_and_hc.csv"
    sizes, reference = read_pixel_size_csv(table), read_reference_csv(table)
    pairs = pair_images_with_labels(folder / "images", folder / "labels")
    cases = []
    for pair in pairs:
        name = io.image_stem(pair["label"])
        cases.append(Case(name, read_label(pair["label"], 2), sizes[name][0], reference[name]))
    return cases


def model_cases(model: Path, folder: Path, tta: bool) -> tuple[list[Case], dict[str, Any]]:
    """The model's masks and head probabilities of every image, and ``evaluate_model``'s summary (Dice, the
    product's HC agreement with and without flagged HCs)."""
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
    reference, sizes = read_reference_csv(table), read_pixel_size_csv(table)
    cases = []
    for pair, prediction in zip(pairs, predictor.predict_many([p["image"] for p in pairs], tta=tta), strict=True):
        name = io.image_stem(pair["image"])
        probability = biometry.class_probability(prediction.probabilities, 1)
        cases.append(Case(name, prediction.mask, sizes[name][0], reference[name], probability))
    summary = {
        "model": str(model),
        "spec": {"input_size": predictor.spec.input_size, "labels": predictor.spec.labels},
        "tta": tta,
        "dice_mean": float(result.metrics["mean"]["dice"]),
        "dice_mean_unflagged": float(np.mean([r["dice"] for r in result.records if r.get("hc_reliable") is not False])),
        "hc_agreement": result.hc_reference,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return cases, summary


def run(data: Path, split: str, model: Path | None, tta: bool) -> dict[str, Any]:
    folder = data / split
    truth = ground_truth_cases(folder)
    start = time.perf_counter()
    sets: dict[str, list[dict[str, Any]]] = {"ground truth": measure_cases(truth, GROUND_TRUTH_ESTIMATORS)}
    for defect in ("leak", "bite", "edge"):
        corrupted = [corrupt(case, defect, i) for i, case in enumerate(truth)]
        sets[f"ground truth + {defect}"] = measure_cases(corrupted, MODEL_ESTIMATORS)
    result: dict[str, Any] = {"split": split, "images": len(truth), "labels": LABELS_NOTE}
    if model is not None:
        cases, result["model"] = model_cases(model, folder, tta)
        sets["model"] = measure_cases(cases, MODEL_ESTIMATORS)
    result["measure_seconds"] = round(time.perf_counter() - start, 1)
    chosen = label_name(CHOSEN)
    result["estimators"] = {
        name: {key: error_summary(errors(rows, key)) for key in rows[0] if key not in ("name", "reference")}
        for name, rows in sets.items()
    }
    result["flag"] = {name: flag_scores(rows, chosen, lambda m: biometry.assess_head(m)) for name, rows in sets.items()}
    result["sweep"] = {name: sweep(rows, chosen) for name, rows in sets.items() if name != "ground truth + edge"}
    result["limits"] = asdict(biometry.RELIABILITY_LIMITS)
    result["chosen"] = chosen
    result["per_image"] = {
        name: [
            {
                "name": r["name"],
                "reference": r["reference"],
                **{
                    k: (None if v is None else round(v.circumference, 3))
                    for k, v in r.items()
                    if k not in ("name", "reference")
                },
                "reliable": None if r[chosen] is None else r[chosen].reliable,
                "reasons": None if r[chosen] is None else list(r[chosen].reasons),
                "checks": None
                if r[chosen] is None
                else {k: v for k, v in asdict(r[chosen]).items() if k not in ("fit", "reasons", "reliable")},
            }
            for r in rows
        ]
        for name, rows in sets.items()
    }
    return result


def product_table(model: dict[str, Any]) -> list[str]:
    """What ``sscase-monai evaluate --reference-csv`` reports for the model: with and without the flagged HCs."""
    agreement = model["hc_agreement"]
    rows = [
        ("model, every image", "prediction", f"{100 * model['dice_mean']:.2f}"),
        ("model, HC not flagged", "prediction_reliable", f"{100 * model['dice_mean_unflagged']:.2f}"),
        ("ground truth (the floor)", "ground_truth", "100.00"),
    ]
    lines = [
        "The product path (`evaluation.evaluate_model(..., reference_hc=...)`, as `sscase-monai evaluate "
        f"--reference-csv` prints it): {agreement['flagged']} of {agreement['n']} model HCs flagged.",
        "",
        "| masks | images | Dice per image (%) | HC mean abs. (mm) | median abs. | p90 abs. | > 5 mm |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for what, key, dice in rows:
        a = agreement[key]
        lines.append(
            f"| {what} | {a['n']} | {dice} | {fmt(a['mean_abs_diff_mm'], 2)} | {fmt(a['median_abs_diff_mm'], 2)} | "
            f"{fmt(a['p90_abs_diff_mm'], 2)} | {a['over_limit']} ({fmt(100 * a['over_limit'] / max(a['n'], 1), 1)} %) |"
        )
    return lines


def render(result: dict[str, Any], command: str, train_command: str, train_note: str) -> str:
    lines = [
        f"HC18 `{result['split']}` ({result['images']} images; {result['labels']}; pixel sizes and reference HC from "
        "its `pixel_size_and_hc.csv`). Every HC is `biometry.measure_head` (the code behind the app's Run, "
        "`predict` and `evaluate`); difference = measured - reference; masks on each image's original grid. "
        f"The product uses **{result['chosen']}** (`biometry.HC_METHOD`, `biometry.HC_BOUNDARY`).",
        "",
        "Estimators (mean abs. / mean / median abs. / 90th pct abs. / max abs. difference in mm; images > 5 mm off):",
        "",
        "| masks | estimator | n | mean abs. | mean | median abs. | p90 abs. | max abs. | > 5 mm |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, estimators in result["estimators"].items():
        shown = name if name != "model" else f"model (per-image Dice {100 * result['model']['dice_mean']:.2f} %)"
        for key, s in estimators.items():
            lines.append(
                f"| {shown} | {key} | {s['n']} | {fmt(s['mean_abs_mm'], 2)} | {fmt(s['mean_mm'], 2)} | "
                f"{fmt(s['median_abs_mm'], 2)} | {fmt(s['p90_abs_mm'], 2)} | {fmt(s['max_abs_mm'], 2)} | "
                f"{s['over_limit']} |"
            )
    limits = ", ".join(f"{k} {v:g}" for k, v in result["limits"].items())
    lines += [
        "",
        f"The flag with the chosen limits (`biometry.RELIABILITY_LIMITS`: {limits}), on the chosen estimator's HC:",
        "",
        "| masks | > 5 mm errors | of them flagged | good (<= 5 mm) | of them flagged | unflagged: mean abs. (mm) | "
        "unflagged > 5 mm |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in result["flag"].items():
        lines.append(
            f"| {name} | {s['bad']} | {s['bad_flagged']} | {s['good']} | {s['good_flagged']} | "
            f"{fmt(s['unflagged_mean_abs_mm'], 2)} ({s['unflagged']} images) | {s['unflagged_over_limit']} |"
        )
    lines += [
        "",
        "Each check alone at several limits, the others off (flagged / all; on the model's masks split into HCs > 5 mm "
        "off and good ones; the corrupted masks are all defective, so there 'flagged' is the detection rate, and on "
        "the clean ground truth it is the false-flag rate):",
        "",
    ]
    header, rule = "| check | limit |", "|---|---:|"
    for name in result["sweep"]:
        header += " model: > 5 mm flagged | model: good flagged |" if name == "model" else f" {name}: flagged |"
        rule += "---:|---:|" if name == "model" else "---:|"
    lines += [header, rule]
    sweeps = list(result["sweep"].items())
    for i, first in enumerate(sweeps[0][1]):
        cells = []
        for name, rows in sweeps:
            s = rows[i]
            if name == "model":
                cells += [f"{s['bad_flagged']}/{s['bad']}", f"{s['good_flagged']}/{s['good']}"]
            else:
                cells.append(f"{s['bad_flagged'] + s['good_flagged']}/{s['bad'] + s['good']}")
        lines.append(f"| {first['check']} | {first['limit']:g} | " + " | ".join(cells) + " |")
    if "model" in result:
        lines += ["", *product_table(result["model"])]
    if "model" in result:
        m = result["model"]
        lines += ["", f"Model: {train_note}", "", f"Training command: `{train_command}`  " if train_command else ""]
        lines.append(f"Model evaluation {m['seconds']:.0f} s{' with test-time augmentation' if m['tta'] else ''}.")
    env = result["machine"]
    lines += [
        f"Measurement command: `{command}`",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores, torch {env['torch']}, {env['threads']} threads; "
        f"measurements {result['measure_seconds']:.0f} s, load average {result['load_average']:.1f} at the start.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="trained HC18 model (model.pt + model.json); "
        "without it only ground-truth and corrupted masks are measured",
    )
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "hc18", help="HC18 folder (train/val/...)")
    parser.add_argument("--split", default="val", help="split to measure (default: val)")
    parser.add_argument("--tta", action="store_true", help="predict with test-time augmentation")
    parser.add_argument("--train-command", default="", help="the command that trained --model (for the record)")
    parser.add_argument("--train-note", default="", help="one sentence on the model's training (for the record)")
    parser.add_argument("--out", type=Path, default=OUT_DEFAULT, help="folder for result.json")
    parser.add_argument("--results", type=Path, default=RESULTS_FILE, help="RESULTS.md to update")
    parser.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args(argv)
    setup_logging()
    load = load_average()
    result = run(args.data, args.split, args.model, args.tta)
    result["machine"] = machine()
    result["load_average"] = load
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    shown = ["--data", str(args.data), "--split", args.split] + (["--model", str(args.model)] if args.model else [])
    command = "nice -n 5 .venv/bin/python " + " ".join(
        [SCRIPT, *map(shlex.quote, shown + (["--tta"] if args.tta else []))]
    )
    text = render(result, command, args.train_command, args.train_note or str(args.model))
    print(text)
    if not args.no_results:
        write_section(SECTION_TITLE, text, SCRIPT, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
