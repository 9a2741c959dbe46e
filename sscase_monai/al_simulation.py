"""Active-learning simulation: replay the Slicer loop on a labelled set with a simulated annotator.

Every *arm* (a strategy, with or without pseudo-labelling) and seed starts from the same ``start`` labelled images
(a seeded draw from the pool) and runs ``rounds`` rounds:

1. train: round 0 runs stages 1 and 2 from the ImageNet encoder (shared by every arm of the seed: trained once);
   later rounds warm-start from the previous round's model and run stage 2 (``SemiSupervisedTrainer`` with
   ``init_weights``); with pseudo-labelling each round also runs stage 3 with the rest of the pool as unlabelled
   images. Every stage of every round gets the same short schedule (:class:`RoundSchedule`, via the trainer's
   ``stage_planner``);
2. score: validation Dice of the round's model, from the trainer's own end-of-stage evaluation
   (``evaluation.evaluate_model``: eval mode, each validation image's own grid, per-image mean);
3. pick: the strategy picks ``step`` pool images (:func:`sscase_monai.active_learning.select_batch`: the scoring
   functions the MONAI Label app's strategies use) and the simulated annotator reveals their labels.

The ``full`` arm is the reference: the same rounds and schedule with the whole pool labelled from round 0; its last
round's Dice is the "full-data Dice" of the summary.

Output folder (rerunning the same command skips every finished round; an interrupted round resumes from the
trainer's checkpoint)::

    seed{S}/round0/                     the shared round-0 training run of seed S
    seed{S}/{arm}/round{R}/             the trainer's output of that round (model.pt, history.csv, ...)
    seed{S}/{arm}/round{R}.json         the finished round: labelled images, Dice, picks, timings
    results.csv                         one row per finished round
    learning_curve.png                  Dice vs labels, mean and min-max over seeds, one line per arm
    summary.txt                         labels needed to reach a share of the full-data Dice, per arm
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sscase_monai.active_learning import LABEL_TARGETS, STRATEGIES, get_strategy, select_batch
from sscase_monai.inference import Predictor
from sscase_monai.model_files import atomic_write_bytes
from sscase_monai.training import SemiSupervisedTrainer, StagePlan, TrainingConfig

logger = logging.getLogger(__name__)

FULL = "full"
"""The reference arm: every pool image labelled from round 0."""
PSEUDO_SUFFIX = "+pl"
"""An arm name with this suffix pseudo-labels the rest of the pool every round (stage 3)."""
RESULTS_CSV = "results.csv"
CURVE_PNG = "learning_curve.png"
SUMMARY_TXT = "summary.txt"
CSV_COLUMNS: tuple[str, ...] = (
    "strategy",
    "pseudo_label",
    "seed",
    "round",
    "n_labels",
    "dice",
    "dice_pooled",
    "hd95",
    "pseudo_labels_accepted",
    "train_seconds",
    "select_seconds",
)


@dataclass(frozen=True)
class Arm:
    """One line of the learning curve: a strategy (or ``full``), with or without stage-3 pseudo-labelling."""

    strategy: str
    pseudo_label: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in (*STRATEGIES, FULL):
            raise ValueError(f"strategy must be one of {(*STRATEGIES, FULL)}, got {self.strategy!r}")

    @property
    def name(self) -> str:
        return self.strategy + (PSEUDO_SUFFIX if self.pseudo_label else "")

    @classmethod
    def parse(cls, text: str) -> Arm:
        """``"epistemic"`` or ``"epistemic+pl"`` (with pseudo-labelling)."""
        text = text.strip()
        if text.endswith(PSEUDO_SUFFIX):
            return cls(text[: -len(PSEUDO_SUFFIX)], True)
        return cls(text)


def parse_arms(text: str | Sequence[str], pseudo_label: bool = False) -> list[Arm]:
    """Arms from ``"random,epistemic,tta+pl"``; ``pseudo_label`` adds the ``+pl`` arm of every strategy named.

    Raises:
        ValueError: an unknown strategy or no strategy.
    """
    names = text.split(",") if isinstance(text, str) else list(text)
    arms = [Arm.parse(n) for n in names if n.strip()]
    if pseudo_label:
        arms += [Arm(a.strategy, True) for a in arms if not a.pseudo_label and a.strategy != FULL]
    unique = list(dict.fromkeys(arms))
    if not unique:
        raise ValueError(f"no strategy given: {text!r}")
    return unique


@dataclass(frozen=True)
class RoundSchedule:
    """The short training schedule of every stage of every round.

    Attributes:
        epochs: epochs per stage.
        samples: training samples per stage (over its epochs): each epoch draws ``samples / epochs`` augmented
            samples, spread over the round's training images (at least one draw of each).
    """

    epochs: int = 2
    samples: int = 400

    def __post_init__(self) -> None:
        if int(self.epochs) != self.epochs or self.epochs < 1:
            raise ValueError(f"epochs per round must be a whole number >= 1, got {self.epochs!r}")
        if int(self.samples) != self.samples or self.samples < 1:
            raise ValueError(f"samples per round must be a whole number >= 1, got {self.samples!r}")

    def plan(self, stage: int, training_images: int) -> StagePlan:
        """A trainer ``stage_planner``: the same epochs, ``samples / epochs`` draws per epoch over the images."""
        per_image = max(1, round(self.samples / (self.epochs * max(training_images, 1))))
        return StagePlan(self.epochs, per_image)


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate.

    Attributes:
        start: labelled images of round 0.
        step: images the annotator labels after each round.
        rounds: training rounds (round ``r`` trains on ``start + r * step`` labels).
        arms: the strategies to compare (see :class:`Arm`); add ``Arm("full")`` for the full-data reference.
        seeds: one simulation per seed (start set, training, random picks, dropout masks).
        training: the model and optimisation settings (its stages, seed, resume and epochs are set per round).
        schedule: each stage's epochs and samples.
        pool_limit: score at most this many pool images per round (a seeded draw); ``None``: the whole pool.
        mc_samples: MC-dropout passes per image (``epistemic``).
        targets: shares of the full-data Dice the summary reports labels for.
    """

    start: int
    step: int
    rounds: int
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...] = (0,)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    schedule: RoundSchedule = field(default_factory=RoundSchedule)
    pool_limit: int | None = None
    mc_samples: int = 8
    targets: tuple[float, ...] = LABEL_TARGETS

    def __post_init__(self) -> None:
        object.__setattr__(self, "arms", tuple(self.arms))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        for name, minimum in (("start", 1), ("step", 1), ("rounds", 1), ("mc_samples", 1)):
            value = getattr(self, name)
            if int(value) != value or value < minimum:
                raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
        if self.pool_limit is not None and (int(self.pool_limit) != self.pool_limit or self.pool_limit < 1):
            raise ValueError(f"pool_limit must be a whole number >= 1 or None, got {self.pool_limit!r}")
        if not self.arms:
            raise ValueError("no arm to simulate")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds!r}")
        if not all(0.0 < t <= 1.0 for t in self.targets):
            raise ValueError(f"targets must be shares in (0, 1], got {self.targets!r}")

    def n_labels(self, round_index: int) -> int:
        return self.start + round_index * self.step


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _write_json(path: Path, values: Mapping[str, Any]) -> None:
    text = json.dumps(values, indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


class ActiveLearningSimulation:
    """Run (or resume) the simulation of ``config`` and write its CSV, curve and summary.

    Args:
        config: what to simulate.
        pool_items: the labelled pool ``{"image", "label"}``: the annotator's answers (unrevealed until picked).
        val_items: labelled validation items (early stopping and the recorded Dice).
        out_dir: output folder (created; rerunning with it resumes).
        progress: a progress bar per round (only on a terminal).

    Raises:
        ValueError: (in the constructor) a pool too small for ``start + (rounds - 1) * step`` labels.
    """

    def __init__(
        self,
        config: SimulationConfig,
        pool_items: Sequence[Mapping[str, Any]],
        val_items: Sequence[Mapping[str, Any]],
        out_dir: str | os.PathLike,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.pool = sorted(({"image": str(i["image"]), "label": str(i["label"])} for i in pool_items), key=_key)
        self.val_items = [{"image": str(i["image"]), "label": str(i["label"])} for i in val_items]
        self.labels = {item["image"]: item["label"] for item in self.pool}
        needed = config.n_labels(config.rounds - 1)
        if any(a.strategy != FULL for a in config.arms) and needed > len(self.pool):
            raise ValueError(
                f"{config.rounds} rounds from {config.start} labels by {config.step} need {needed} pool images, "
                f"the pool has {len(self.pool)}"
            )
        if not self.val_items:
            raise ValueError("no validation images")
        self.out_dir = Path(out_dir)
        self.progress = progress

    # ------------------------------------------------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        """Every arm of every seed, round by round; returns the CSV rows (also written with the curve and summary)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for seed in self.config.seeds:
            for arm in self.config.arms:
                self.run_arm(arm, seed)
        return self.write_outputs()

    def run_arm(self, arm: Arm, seed: int) -> list[dict[str, Any]]:
        """The rounds of one arm and seed (finished rounds are read back); returns their records."""
        records = []
        labelled = self.start_set(seed) if arm.strategy != FULL else [item["image"] for item in self.pool]
        for round_index in range(self.config.rounds):
            path = self.round_path(arm, seed, round_index)
            record = _read_json(path)
            if record is None:
                record = self._run_round(arm, seed, round_index, labelled)
                _write_json(path, record)
            else:
                logger.info("%s seed %d round %d: finished in an earlier run", arm.name, seed, round_index)
            records.append(record)
            labelled = list(record["labelled"]) + list(record["selected"])
        return records

    def start_set(self, seed: int) -> list[str]:
        """The seed's round-0 labelled images (the same for every arm)."""
        order = np.random.default_rng([seed, 0]).permutation(len(self.pool))
        return sorted((self.pool[i]["image"] for i in order[: self.config.start]), key=_key)

    def round_path(self, arm: Arm, seed: int, round_index: int) -> Path:
        return self.out_dir / f"seed{seed}" / arm.name / f"round{round_index}.json"

    def _run_dir(self, arm: Arm, seed: int, round_index: int) -> Path:
        return self.out_dir / f"seed{seed}" / arm.name / f"round{round_index}"

    def _shared_round0_dir(self, seed: int) -> Path:
        return self.out_dir / f"seed{seed}" / "round0"

    # ------------------------------------------------------------------------------------------------------------

    def _run_round(self, arm: Arm, seed: int, round_index: int, labelled: list[str]) -> dict[str, Any]:
        last = round_index == self.config.rounds - 1
        show = self.progress and sys.stderr.isatty()
        bar = tqdm(total=2, desc=f"{arm.name} seed {seed} round {round_index}", unit="step", disable=not show)
        start = time.monotonic()
        bar.set_postfix_str(f"train on {len(labelled)} labels")
        result = self._train(arm, seed, round_index, labelled)
        train_seconds = time.monotonic() - start
        metrics = result.stages[max(result.stages)].metrics or {}
        dice = float(metrics.get("mean", {}).get("dice", math.nan))
        bar.update()
        bar.set_postfix_str(f"Dice {dice:.4f}; pick {0 if last else self.config.step}")
        start = time.monotonic()
        selected = [] if last or arm.strategy == FULL else self._select(arm, seed, round_index, labelled, result)
        select_seconds = time.monotonic() - start
        bar.update()
        bar.close()
        record = {
            "strategy": arm.strategy,
            "pseudo_label": arm.pseudo_label,
            "seed": seed,
            "round": round_index,
            "n_labels": len(labelled),
            "dice": dice,
            "dice_pooled": float(metrics.get("pooled", {}).get("dice", math.nan)),
            "hd95": float(metrics.get("mean", {}).get("hd95", math.nan)),
            "pseudo_labels_accepted": sum(r.accepted for r in result.pseudo_labels),
            "train_seconds": round(train_seconds, 1),
            "select_seconds": round(select_seconds, 1),
            "model": str(result.model_path),
            "labelled": labelled,
            "selected": selected,
        }
        logger.info(
            "%s seed %d round %d: %d labels, Dice %.4f (train %.0f s, pick %.0f s)",
            arm.name,
            seed,
            round_index,
            len(labelled),
            dice,
            train_seconds,
            select_seconds,
        )
        return record

    def _train(self, arm: Arm, seed: int, round_index: int, labelled: list[str]) -> Any:
        """The round's training run (round 0 without pseudo-labels: the seed's shared run)."""
        base = replace(self.config.training, seed=seed, resume=True)
        labelled_set = set(labelled)
        unlabelled = [{"image": i["image"]} for i in self.pool if i["image"] not in labelled_set]
        if round_index == 0:
            shared = self._shared_round0_dir(seed)
            if arm.strategy == FULL:
                config, out_dir = replace(base, run_stages=(1, 2)), self._run_dir(arm, seed, 0)
            elif not arm.pseudo_label:
                config, out_dir = replace(base, run_stages=(1, 2)), shared
            else:  # pseudo-labelling on top of the shared round 0
                shared_model = self._shared_model(seed, labelled)
                config = replace(base, run_stages=(3,), init_weights=str(shared_model))
                out_dir = self._run_dir(arm, seed, 0)
        else:
            previous = _read_json(self.round_path(arm, seed, round_index - 1))
            if previous is None:
                raise ValueError(f"round {round_index - 1} of {arm.name} seed {seed} is not finished")
            stages = (2, 3) if arm.pseudo_label else (2,)
            config = replace(base, run_stages=stages, init_weights=previous["model"])
            out_dir = self._run_dir(arm, seed, round_index)
        train = [{"image": image, "label": self.labels[image]} for image in labelled]
        trainer = SemiSupervisedTrainer(
            config,
            train,
            self.val_items,
            unlabelled if 3 in config.run_stages else (),
            out_dir,
            stage_planner=self.config.schedule.plan,
        )
        result = trainer.run()
        if result.model_path is None:
            raise RuntimeError(f"training of {arm.name} seed {seed} round {round_index} stopped before the end")
        return result

    def _shared_model(self, seed: int, labelled: list[str]) -> Path:
        """The seed's shared round-0 model (trained now when no arm without pseudo-labels made it yet)."""
        path = self._shared_round0_dir(seed) / "model.pt"
        if not path.is_file():
            self._train(Arm("random"), seed, 0, labelled)
        return path

    def _select(self, arm: Arm, seed: int, round_index: int, labelled: list[str], result: Any) -> list[str]:
        labelled_set = set(labelled)
        pool = [item["image"] for item in self.pool if item["image"] not in labelled_set]
        rng = np.random.default_rng([seed, round_index + 1])
        if self.config.pool_limit is not None and len(pool) > self.config.pool_limit:
            pool = sorted((pool[i] for i in rng.choice(len(pool), self.config.pool_limit, replace=False)), key=_key)
        predictor = None
        if get_strategy(arm.strategy).needs_model:
            predictor = Predictor.from_file(result.model_path, device=self.config.training.device)
        return select_batch(
            arm.strategy,
            predictor,
            pool,
            labelled,
            self.config.step,
            seed=int(rng.integers(2**31)),
            num_samples=self.config.mc_samples,
        )

    # ------------------------------------------------------------------------------------------------------------

    def records(self) -> list[dict[str, Any]]:
        """Every finished round in the output folder (also of arms or seeds not in this run's config)."""
        out = []
        for path in sorted(self.out_dir.glob("seed*/*/round*.json")):
            record = _read_json(path)
            if record is not None:
                out.append(record)
        return sorted(out, key=lambda r: (_arm_order(r), r["seed"], r["round"]))

    def write_outputs(self) -> list[dict[str, Any]]:
        """Write ``results.csv``, ``learning_curve.png`` and ``summary.txt`` from every finished round."""
        rows = [{key: r[key] for key in CSV_COLUMNS} for r in self.records()]
        with open(self.out_dir / RESULTS_CSV, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        plot_learning_curve(rows, self.out_dir / CURVE_PNG)
        text = "\n".join(summary_lines(rows, self.config.targets)) + "\n"
        (self.out_dir / SUMMARY_TXT).write_text(text)
        return rows


def _key(item: Any) -> str:
    return os.path.basename(item["image"] if isinstance(item, Mapping) else str(item))


def _arm_order(record: Mapping[str, Any]) -> tuple[int, str, bool]:
    strategy = record["strategy"]
    order = (*STRATEGIES, FULL)
    return (order.index(strategy) if strategy in order else len(order), strategy, bool(record["pseudo_label"]))


def _arm_name(row: Mapping[str, Any]) -> str:
    return Arm(row["strategy"], _truthy(row["pseudo_label"])).name


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1", "yes")


def curves(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, list[float]]]:
    """``{arm: {n_labels: [Dice of each seed]}}`` from CSV rows."""
    out: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        out.setdefault(_arm_name(row), {}).setdefault(int(row["n_labels"]), []).append(float(row["dice"]))
    return out


def _full_last_round(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    """The ``full`` arm's Dice in its last round, one value per seed that finished that round."""
    full = [r for r in rows if r["strategy"] == FULL and not _truthy(r["pseudo_label"])]
    if not full:
        return []
    last = max(int(r["round"]) for r in full)
    return [float(r["dice"]) for r in full if int(r["round"]) == last]


def full_data_dice(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Mean over seeds of the ``full`` arm's last-round Dice (``None`` without a full arm)."""
    values = _full_last_round(rows)
    return float(np.mean(values)) if values else None


def labels_to_reach(curve: Mapping[int, Sequence[float]], target: float) -> int | None:
    """Fewest labels whose mean Dice over seeds is at least ``target`` (``None``: never reached)."""
    for n_labels in sorted(curve):
        if float(np.mean(curve[n_labels])) >= target:
            return n_labels
    return None


def summary_lines(rows: Sequence[Mapping[str, Any]], targets: Sequence[float] = LABEL_TARGETS) -> list[str]:
    """One line per arm: labels needed to reach each share of the full-data Dice, and its mean Dice over rounds."""
    by_arm = curves(rows)
    full = full_data_dice(rows)
    if full is None:
        lines = ["full-data Dice: not simulated (add the 'full' strategy); labels needed not computed"]
    else:
        seeds = len(_full_last_round(rows))
        lines = [f"full-data Dice: {full:.4f} (the 'full' arm's last round, mean of {seeds} seed(s))"]
    for arm, curve in by_arm.items():
        if arm == FULL:
            continue
        mean_over_rounds = float(np.mean([np.mean(v) for v in curve.values()]))
        seeds = max(len(v) for v in curve.values())
        parts = [f"{arm}: mean Dice over rounds {mean_over_rounds:.4f} ({seeds} seed(s))"]
        if full is not None:
            for share in targets:
                needed = labels_to_reach(curve, share * full)
                reached = f"{needed} labels" if needed is not None else f"not reached with {max(curve)} labels"
                parts.append(f"{100 * share:g}% of full-data Dice ({share * full:.4f}): {reached}")
        lines.append("; ".join(parts))
    return lines


def plot_learning_curve(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str | None = None) -> Path:
    """Dice vs number of labels: mean over seeds (line) and min-max over seeds (band), one line per arm.

    One colour per strategy, dashed with pseudo-labelling; the ``full`` arm is a horizontal line at its last round's
    mean Dice.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    order = (*STRATEGIES, FULL)
    for arm, curve in curves(rows).items():
        if arm == FULL:
            full = full_data_dice(rows)
            if full is not None:
                axes.axhline(full, color="black", linestyle="--", linewidth=1, label=f"full data ({full:.3f})")
            continue
        x = sorted(curve)
        values = [np.asarray(curve[n]) for n in x]
        mean = [float(v.mean()) for v in values]
        parsed = Arm.parse(arm)
        colour = colours[order.index(parsed.strategy) % len(colours)]
        axes.plot(
            x,
            mean,
            marker="o",
            markersize=3,
            color=colour,
            linestyle="--" if parsed.pseudo_label else "-",
            label=f"{arm} (n={max(len(v) for v in values)})",
        )
        axes.fill_between(x, [v.min() for v in values], [v.max() for v in values], color=colour, alpha=0.12)
    axes.set_xlabel("labelled images")
    axes.set_ylabel("validation Dice (per-image mean)")
    axes.set_title(title or "Active learning: Dice vs labels (mean, band = min-max over seeds)", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    plt.close(figure)
    return path
