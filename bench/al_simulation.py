"""Active-learning simulation on HC18 (issues #12, #22): Dice vs labels for every strategy of the registry.

The simulation is the library's (:class:`sscase_monai.al_simulation.ActiveLearningSimulation`, what
``sscase-monai simulate-al`` runs); this script runs it in phases into one output folder (finished rounds are skipped
when it is rerun), then writes the section "Active learning at the real operating point (issue #22)" of
``bench/RESULTS.md`` (with the selection times of ``bench/al_selection_time.py`` when measured) and copies the
learning curve to ``bench/al_curve_128.png`` and the finished rounds to ``bench/al_simulation_128.csv`` (what
``--report-only`` reads when ``--out`` is gone):

1. ``main``: every strategy of the registry (random, epistemic, tta, diversity, hybrid), every ``--seeds`` seed;
2. ``full``: the full-data reference (every pool image labelled, same rounds and schedule), ``--full-seeds``;
3. ``pl``: with pseudo-labelling (stage 3 on the rest of the pool every round) for random and the strategy with the
   best mean Dice over rounds in phase 1 (random's runner-up when random is best), ``--pl-seeds``.

Example (from the repository root)::

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python bench/al_simulation.py --data /work/shared/data/hc18
    .venv/bin/python bench/al_simulation.py --report-only

Phases of different seeds write to different folders and can run at the same time, one process a core (``--seeds 1
--phases main`` beside ``--seeds 0 --phases main``).
"""

from __future__ import annotations

import argparse
import csv
import logging
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from al_selection_time import SELECTION_CSV, read_rows  # noqa: E402
from common import RESULTS_FILE, SHARED_DATA, load_average, machine, setup_logging, write_section  # noqa: E402

from sscase_monai.active_learning import LABEL_TARGETS, STRATEGIES, STRATEGY_REGISTRY  # noqa: E402
from sscase_monai.al_simulation import (  # noqa: E402
    CSV_COLUMNS,
    CURVE_PNG,
    FULL,
    ActiveLearningSimulation,
    Arm,
    RoundSchedule,
    SimulationConfig,
    curves,
    full_data_dice,
    labels_to_reach,
    plot_learning_curve,
    summary_lines,
)
from sscase_monai.cli.train import int_list  # noqa: E402
from sscase_monai.data import pair_images_with_labels  # noqa: E402
from sscase_monai.method import PSEUDO_LABELS  # noqa: E402
from sscase_monai.model_files import ModelSpec  # noqa: E402
from sscase_monai.training import TrainingConfig  # noqa: E402
from sscase_monai.transforms import InputSize, format_input_size, parse_input_size  # noqa: E402

logger = logging.getLogger("al_simulation")

SECTION_TITLE = "Active learning at the real operating point (issue #22)"
SCRIPT = "bench/al_simulation.py"
CURVE_FILE = REPO_ROOT / "bench" / "al_curve_128.png"
ROWS_CSV = REPO_ROOT / "bench" / "al_simulation_128.csv"
"""Every finished round, kept in the repository: each report merges ``--out``'s rounds into it, and ``--report-only``
rewrites the section from it when ``--out`` is gone (the models and round records under ``bench/out`` are not
committed)."""
SELECTION_COMMAND = (
    "nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python bench/al_selection_time.py "
    "--model bench/out/al128/seed0/round0/model.pt --sizes 500,5000"
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "hc18", help="HC18 folder (train/, val/)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "out" / "al128", help="output folder")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of phase 1 (0,1,2)")
    parser.add_argument("--full-seeds", default="0,1,2", help="seeds of the full-data reference (0,1,2)")
    parser.add_argument("--pl-seeds", default="0,1,2", help="seeds of the pseudo-labelling arms (0,1,2)")
    parser.add_argument("--phases", default="main,full,pl", help="phases to run, in order (main,full,pl)")
    parser.add_argument("--start", type=int, default=8)
    parser.add_argument("--step", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per stage and round (2)")
    parser.add_argument("--samples", type=int, default=1024, help="training samples per stage and round (1024)")
    parser.add_argument("--lr", default="1e-3,3e-4,1e-4", help="stage 1/2/3 learning rates")
    parser.add_argument("--val-limit", type=int, default=87, help="validate on the first N val images by name (87)")
    parser.add_argument("--pool-limit", type=int, default=None, help="score a seeded draw of N pool images")
    parser.add_argument("--report-only", action="store_true", help="only regenerate the section from --out")
    parser.add_argument("--results", type=Path, default=RESULTS_FILE, help="Markdown file to update")
    parser.add_argument("--rows", type=Path, default=ROWS_CSV, help="the repository's copy of the finished rounds")
    parser.add_argument("--selection-csv", type=Path, default=SELECTION_CSV, help="bench/al_selection_time.py's CSV")
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> tuple[SimulationConfig, list, list]:
    pool = pair_images_with_labels(args.data / "train" / "images", args.data / "train" / "labels")
    val = sorted(pair_images_with_labels(args.data / "val" / "images", args.data / "val" / "labels"),
                 key=lambda i: Path(i["image"]).name)[: args.val_limit]  # fmt: skip
    training = TrainingConfig(
        spec=ModelSpec(input_size=args.input_size), device="cpu", progress=True, tensorboard=False
    ).with_stage_settings(lr=[float(v) for v in args.lr.split(",")])
    config = SimulationConfig(
        start=args.start,
        step=args.step,
        rounds=args.rounds,
        arms=tuple(Arm(s) for s in STRATEGIES),
        seeds=int_list(args.seeds),
        training=training,
        schedule=RoundSchedule(args.epochs, args.samples),
        pool_limit=args.pool_limit,
        targets=LABEL_TARGETS,
    )
    return config, pool, val


def kept_rows(simulation: ActiveLearningSimulation, rows_csv: Path) -> list[dict[str, str]]:
    """The repository's copy of the finished rounds with ``--out``'s records merged in (``--out`` wins a round both
    hold), so a run in a new checkout adds to the figures instead of replacing them."""
    key_columns = ("strategy", "pseudo_label", "seed", "round")
    rows: dict[tuple[str, ...], dict[str, str]] = {}
    if rows_csv.is_file():
        with open(rows_csv) as f:
            rows = {tuple(r[k] for k in key_columns): r for r in csv.DictReader(f)}
    for record in simulation.records():
        row = {k: str(record[k]) for k in CSV_COLUMNS}
        rows[tuple(row[k] for k in key_columns)] = row
    order = (*STRATEGIES, FULL)

    def sort_key(row: dict[str, str]) -> tuple:
        strategy = row["strategy"]
        rank = order.index(strategy) if strategy in order else len(order)
        return rank, row["pseudo_label"] == "True", int(row["seed"]), int(row["round"])

    return sorted(rows.values(), key=sort_key)


def best_strategy(rows: list[dict]) -> str:
    """The non-random strategy with the highest mean Dice over rounds (phase 1; pseudo-labelling arms ignored)."""
    means = {arm: float(np.mean([np.mean(v) for v in c.values()])) for arm, c in curves(rows).items()}
    candidates = [s for s in STRATEGIES if s != "random" and s in means]
    return max(candidates, key=lambda s: means[s])


def run(args: argparse.Namespace) -> None:
    config, pool, val = build(args)
    started = time.time()
    for phase in args.phases.split(","):
        if phase == "main":
            phase_config = config
        elif phase == "full":
            phase_config = replace(config, arms=(Arm(FULL),), seeds=int_list(args.full_seeds))
        elif phase == "pl":
            best = best_strategy(kept_rows(ActiveLearningSimulation(config, pool, val, args.out), args.rows))
            phase_config = replace(config, arms=(Arm("random", True), Arm(best, True)), seeds=int_list(args.pl_seeds))
        else:
            raise SystemExit(f"unknown phase {phase!r}")
        logger.info("phase %s: arms %s, seeds %s", phase, [a.name for a in phase_config.arms], phase_config.seeds)
        ActiveLearningSimulation(phase_config, pool, val, args.out).run()
        logger.info("phase %s done after %.1f min", phase, (time.time() - started) / 60)


def _selection_seconds(path: Path) -> dict[tuple[str, int, int], float]:
    """``{(strategy, input size, pool size): CPU seconds}`` from ``bench/al_selection_time.py``'s CSV (or empty)."""
    return {
        (r["strategy"], parse_input_size(r["input_size"]), int(r["pool"])): float(r["cpu_seconds"])
        for r in read_rows(path)
    }


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _pick_time(selection: dict[tuple[str, int, int], float], strategy: str, size: int, pool: int) -> str:
    """The measured time, else an estimate from the largest smaller pool measured (scoring is per image, so the
    time grows linearly with the pool; marked "≈ ... est."), else "not measured"."""
    if (strategy, size, pool) in selection:
        return _seconds(selection[strategy, size, pool])
    smaller = sorted(p for s, z, p in selection if s == strategy and z == size and p < pool)
    if not smaller:
        return "not measured"
    return f"≈ {_seconds(selection[strategy, size, smaller[-1]] * pool / smaller[-1])} est."


def _table(rows: list[dict], selection: dict[tuple[str, int, int], float], input_size: InputSize) -> str:
    """Dice per arm and label count, labels to each target share of the full-data Dice, and the picking time."""
    by_arm = {arm: curve for arm, curve in curves(rows).items() if arm != FULL}
    full = full_data_dice(rows)
    counts = sorted({n for c in by_arm.values() for n in c})
    targets = [f"labels to {100 * t:g} % of full" for t in LABEL_TARGETS]
    lines = ["| arm | " + " | ".join(f"{n} labels" for n in counts) + " | mean over rounds | "
             + " | ".join(targets) + f" | picking 8 of 5,000 scans ({format_input_size(input_size)} px) |",
             "|---|" + "---:|" * (len(counts) + 2 + len(targets))]  # fmt: skip
    for arm, curve in by_arm.items():
        cells = []
        for n in counts:
            values = np.asarray(curve.get(n, []), float) * 100
            spread = f" ± {values.std():.2f}" if len(values) > 1 else ""
            cells.append("" if not len(values) else f"{values.mean():.2f}{spread} (n={len(values)})")
        cells.append(f"{np.mean([np.mean(v) for v in curve.values()]) * 100:.2f}")
        for share in LABEL_TARGETS:
            needed = None if full is None else labels_to_reach(curve, share * full)
            cells.append(str(needed) if needed is not None else f"> {max(curve)}" if full is not None else "n/a")
        cells.append(_pick_time(selection, Arm.parse(arm).strategy, input_size, 5000))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _selection_table(selection: dict[tuple[str, int, int], float]) -> list[str]:
    """Seconds to pick 8 images, per strategy, for each measured (input size, pool size)."""
    columns = sorted({(size, pool) for _, size, pool in selection})
    if not columns:
        return ["Selection time: not measured (run `bench/al_selection_time.py`)."]
    lines = ["| strategy | " + " | ".join(f"{pool:,} scans, {size} px" for size, pool in columns) + " |",
             "|---|" + "---:|" * len(columns)]  # fmt: skip
    for strategy in STRATEGIES:
        cells = [_pick_time(selection, strategy, size, pool) for size, pool in columns]
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return lines


def _paired(rows: list[dict], arm: str, reference: str = "random") -> str | None:
    """(arm - reference) mean Dice over the rounds 1..R both ran, paired by seed: mean ± standard deviation and per
    seed."""
    per_seed: dict[str, dict[int, dict[int, float]]] = {}
    for r in rows:
        if int(r["round"]) == 0:
            continue
        name = Arm(r["strategy"], r["pseudo_label"] in (True, "True")).name
        per_seed.setdefault(name, {}).setdefault(int(r["seed"]), {})[int(r["round"])] = float(r["dice"])
    a, b = per_seed.get(arm, {}), per_seed.get(reference, {})
    common = {s: sorted(set(a[s]) & set(b[s])) for s in sorted(set(a) & set(b))}
    seeds = [s for s, rounds in common.items() if rounds]
    if not seeds:
        return None
    diffs = [100 * np.mean([a[s][i] - b[s][i] for i in common[s]]) for s in seeds]
    reference_rounds = max(len(rounds) for rounds in b.values())

    def per_seed_text(seed: int, diff: float) -> str:
        short = len(common[seed]) < reference_rounds
        return f"{diff:+.2f}" + (f" (rounds 1-{max(common[seed])} only)" if short else "")

    values = ", ".join(per_seed_text(s, d) for s, d in zip(seeds, diffs, strict=True))
    better = sum(d > 0 for d in diffs)
    return (
        f"{arm} - {reference}: {np.mean(diffs):+.2f} ± {np.std(diffs):.2f} Dice points (mean over rounds 1+; "
        f"per seed {values}; better on {better} of {len(diffs)})"
    )


def _pseudo_label_table(rows: list[dict], pool: int) -> list[str]:
    """Per pseudo-labelling arm and round: pseudo-labels the method's filter accepted of those offered (all seeds)."""
    labelled = [r for r in rows if r["pseudo_label"] == "True"]
    arms = [s for s in STRATEGIES if any(r["strategy"] == s for r in labelled)]
    if not arms:
        return ["No pseudo-labelling arm has run yet."]
    rounds = sorted({int(r["round"]) for r in labelled})
    lines = ["| arm | " + " | ".join(f"round {i}" for i in rounds) + " | all |", "|---|" + "---:|" * (len(rounds) + 1)]
    for strategy in arms:
        mine = [r for r in labelled if r["strategy"] == strategy]
        cells = []
        for index in [*rounds, None]:
            chosen = [r for r in mine if index is None or int(r["round"]) == index]
            offered = sum(pool - int(r["n_labels"]) for r in chosen)
            accepted = sum(int(r["pseudo_labels_accepted"]) for r in chosen)
            cells.append(f"{accepted} / {offered} ({len(chosen)})" if chosen else "")
        lines.append(f"| {strategy}+pl | " + " | ".join(cells) + " |")
    return lines


def render(args: argparse.Namespace, rows: list[dict], seconds: float) -> str:
    config, pool, val = build(args)
    selection = _selection_seconds(args.selection_csv)
    input_size = config.training.spec.input_size
    input_text = format_input_size(input_size)
    other_sizes = sorted({format_input_size(size) for _, size, _ in selection if size != input_size})
    host = machine()
    command = "nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python bench/al_simulation.py --data " + shlex.quote(
        str(args.data)
    )
    out = args.out.relative_to(REPO_ROOT) if args.out.is_relative_to(REPO_ROOT) else args.out
    cli = (
        f"sscase-monai simulate-al --images {args.data}/train/images --labels {args.data}/train/labels "
        f"--val-images {args.data}/val/images --val-labels {args.data}/val/labels --val-limit {args.val_limit} "
        f"--start {args.start} --step {args.step} --rounds {args.rounds} "
        f"--strategies {','.join(STRATEGIES)} --seeds {args.seeds} --input-size {format_input_size(args.input_size)} "
        f"--epochs {args.epochs} --samples {args.samples} --lr {args.lr} --device cpu --threads 1 --out {out}"
    )
    arms = {Arm.parse(name) for name in curves(rows)}
    paired = [_paired(rows, s) for s in STRATEGIES[1:]]
    pl_arms = [s for s in STRATEGIES if Arm(s, True) in arms]
    paired += [_paired(rows, f"{s}+pl", s) for s in pl_arms]
    paired += [_paired(rows, f"{s}+pl") for s in pl_arms if s != "random"]
    paired += [_paired(rows, f"{s}+pl", "random+pl") for s in pl_arms if s != "random"]
    paired = [p for p in paired if p]
    stage_lrs = ", ".join(f"{s.lr:g}" for s in config.training.stages)
    strategies = "; ".join(
        f"{s.name} = {s.description[0].lower() + s.description[1:]}" for s in STRATEGY_REGISTRY.values()
    )
    return "\n".join(
        [
            f"Measured {time.strftime('%Y-%m-%d')} on {host['cpu']}, {host['cores']} cores shared with other jobs "
            f"(the simulation ran as two queues of seeds, one core each, beside the selection timing), no GPU "
            f"(torch {host['torch']}, MONAI {host['monai']}), 1 torch thread a process, under `nice -n 10`; "
            f"load average at the end {load_average():.1f}; "
            f"{seconds / 60:.0f} min of simulation in total (sum of the rounds' training and picking).",
            "",
            f"Protocol (the library's `ActiveLearningSimulation`, as `sscase-monai simulate-al`): pool = HC18 `train` "
            f"({len(build(args)[1])} labelled images, labels revealed when picked), validation = the first "
            f"{len(val)} HC18 `val` images by name (Dice per-image mean on each image's own grid, the trainer's "
            f"end-of-stage `evaluate_model`, eval mode). Start {config.start} labels (a seeded draw, the same for "
            f"every strategy of a seed), +{config.step} per round, {config.rounds} rounds "
            f"({config.start}..{config.n_labels(config.rounds - 1)} labels). CPU schedule: input "
            f"{input_text}, batch {config.training.batch_size},"
            f" every stage of every round {config.schedule.epochs} epochs x {config.schedule.samples} augmented "
            f"samples in all; round 0 = stages 1+2 from the ImageNet lite0 encoder (shared by the strategies of a "
            f"seed), later rounds warm-start from the previous round's model and run stage 2 (+ stage 3 on the "
            f"rest of the pool with pseudo-labelling); stage LRs {stage_lrs}. Strategies pick "
            f"{config.step} images per round from the whole remaining pool with the app's scoring functions "
            f"(`active_learning.select_batch`, MC dropout with {config.mc_samples} passes, the labelled images as the "
            f"centers of coverage): {strategies}. Full-data Dice = the `full` arm: the same rounds and "
            f"schedule with all {len(build(args)[1])} pool images labelled from round 0, last round, seeds "
            f"{args.full_seeds}. Seeds: {args.seeds} (pseudo-labelling arms: {args.pl_seeds}).",
            "",
            f"Command: `{command}` (phases main, full, pl into `{out}`; rerunning skips finished rounds; seeds can "
            f"run in parallel, one process a core, e.g. `--seeds 1 --phases main`). Phase 1 alone is `{cli}`. "
            f"Selection times: `{SELECTION_COMMAND}` with the seed-0 round-0 model (input "
            f"{input_text})"
            + (
                " and with the fetal-head model shipped at the time (`--model apps/sscase/starter/hc18_head.pt --sizes"
                f" 500`, input {', '.join(other_sizes)})."
                if other_sizes
                else " (the sizes 500 and 5,000 split over runs as time allowed; `--strategies` chooses)."
            ),
            "",
            f"![Dice vs labels]({CURVE_FILE.name})",
            "",
            "Validation Dice (%), mean ± standard deviation over seeds; labels needed for the mean over seeds to reach "
            "97 % and 99 % of the full-data Dice; the time the strategy takes to pick 8 of 5,000 unlabelled scans "
            "(1 CPU thread):",
            "",
            _table(rows, selection, input_size),
            "",
            *[f"- {line}" for line in summary_lines(rows, LABEL_TARGETS)],
            "",
            "Paired by seed (same start set and round-0 model):",
            "",
            *[f"- {line}" for line in paired],
            "",
            f"Stage 3's pseudo-labels per round, accepted / offered over every seed (rounds run): the method's filter "
            f"({PSEUDO_LABELS.describe()}):",
            "",
            *_pseudo_label_table(rows, len(pool)),
            "",
            "Time to pick 8 images (`active_learning.select_batch`, 48 labelled images as coverage centers; CPU time "
            "of one torch thread, i.e. the time on an idle core; scoring is per image, so it grows with the pool; "
            '"est." = not measured at that size, 10 x the 500-scan time):',
            "",
            *_selection_table(selection),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    if not args.report_only:
        if not (args.data / "train" / "images").is_dir():
            raise SystemExit(f"HC18 not found at {args.data} (give --data)")
        torch.set_num_threads(1)
        run(args)
    config, pool, val = build(args)
    simulation = ActiveLearningSimulation(config, pool, val, args.out)
    if simulation.records():
        simulation.write_outputs()
    rows = kept_rows(simulation, args.rows)
    if not rows:
        raise SystemExit(f"no finished round in {args.out} and no {args.rows}")
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.rows, "w", newline="") as f:  # the repository's copy of the figures
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    seconds = sum(float(r["train_seconds"]) + float(r["select_seconds"]) for r in rows)
    size = format_input_size(config.training.spec.input_size)
    plot_learning_curve(rows, args.out / CURVE_PNG, title=f"HC18, {size} px CPU schedule")
    shutil.copyfile(args.out / CURVE_PNG, CURVE_FILE)
    write_section(SECTION_TITLE, render(args, rows, seconds), SCRIPT, args.results)
    logger.info("updated %s and %s", args.results, CURVE_FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
