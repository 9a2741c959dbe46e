"""Active-learning simulation (``sscase-monai simulate-al``) on the sample data, and the batch strategies it uses."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from sscase_monai.active_learning import (
    SCORED_STRATEGIES,
    STRATEGIES,
    STRATEGY_REGISTRY,
    ActiveLearningStrategy,
    coverage_distance,
    encoder_features,
    get_strategy,
    k_center_greedy,
    score_images,
    select_batch,
    uncertainty_weights,
)
from sscase_monai.al_simulation import Arm, RoundSchedule, labels_to_reach, parse_arms, summary_lines
from sscase_monai.cli import main
from sscase_monai.data import split_studies_folder
from sscase_monai.inference import Predictor

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO_ROOT / "sample-data"
ARMS = ("random", "epistemic", "tta", "diversity", "hybrid", "random+pl", "full")
PICKING_ARMS = ARMS[:-1]
"""The arms that pick (all but ``full``)."""


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def unit(rows: list[list[float]]) -> np.ndarray:
    array = np.asarray(rows, np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def test_k_center_greedy_picks_the_uncovered_directions_first():
    centers = unit([[1, 0, 0]])
    candidates = unit([[1, 0.05, 0], [0, 1, 0], [0, 0.98, 0.05], [0, 0, 1]])
    picks = k_center_greedy(candidates, centers, 2)
    # both far directions, not the near-duplicate of the first pick nor the image beside the labelled one
    assert sorted(picks) == [1, 3]
    assert k_center_greedy(candidates, centers, 10) == picks + [2, 0]  # everything, the covered one last
    np.testing.assert_allclose(coverage_distance(candidates, centers)[[0, 1]], [1 - candidates[0, 0], 1.0], atol=1e-6)
    assert len(k_center_greedy(candidates, np.zeros((0, 3), np.float32), 1)) == 1  # no labels yet: still a pick
    with pytest.raises(ValueError, match="k must be"):
        k_center_greedy(candidates, centers, -1)


def test_uncertainty_weighted_k_center_picks_far_and_uncertain_images_not_near_duplicates():
    """The ``hybrid`` strategy's pick on a constructed pool (issue #22): uncertainty alone takes two near-duplicates,
    coverage alone the far but certain image; weighted, the far and uncertain image first, then coverage again."""
    centers = unit([[1, 0, 0]])  # the labelled image
    candidates = unit(
        [
            [0, 0, 1],  # 0: far from the labelled image, the model is sure of it
            [1, 1, 0],  # 1: half-way, the most uncertain
            [1, 1, 0.05],  # 2: a near-duplicate of 1, as uncertain
            [1, 0.05, 0],  # 3: beside the labelled image, uncertain
        ]
    )
    uncertainty = np.array([0.1, 5.0, 4.9, 4.8])
    weights = uncertainty_weights(uncertainty)
    np.testing.assert_allclose(weights, [0.25, 1.0, 0.75, 0.5])
    assert k_center_greedy(candidates, centers, 2, weights) == [1, 0]
    assert k_center_greedy(candidates, centers, 1) == [0]  # diversity: the certain far image first
    assert list(np.argsort(-uncertainty)[:2]) == [1, 2]  # an uncertainty strategy: both near-duplicates
    assert k_center_greedy(candidates, centers, 4, weights) == [1, 0, 3, 2]
    np.testing.assert_allclose(uncertainty_weights([2.0, 2.0, 1.0]), [5 / 6, 5 / 6, 1 / 3])  # ties share their rank
    assert uncertainty_weights([]).shape == (0,)
    with pytest.raises(ValueError, match="finite"):
        uncertainty_weights([1.0, float("nan")])
    with pytest.raises(ValueError, match="weights must be 4 non-negative numbers"):
        k_center_greedy(candidates, centers, 1, weights[:2])


def test_select_batch_random_is_seeded_and_names_bad_strategies():
    pool = [f"img{i}.png" for i in range(20)]
    first = select_batch("random", None, pool, [], 5, seed=3)
    assert first == select_batch("random", None, pool, [], 5, seed=3)
    assert len(set(first)) == 5 and set(first) <= set(pool)
    assert first != select_batch("random", None, pool, [], 5, seed=4)
    with pytest.raises(ValueError, match="strategy must be one of"):
        select_batch("entropy", None, pool, [], 5)
    with pytest.raises(ValueError, match="needs the current model"):
        select_batch("epistemic", None, pool, [], 5)


def test_the_registry_names_every_strategy_once_and_refuses_unknown_ones():
    assert STRATEGIES[0] == "random" and not get_strategy("random").needs_model
    assert [s.name for s in SCORED_STRATEGIES] == ["epistemic", "tta", "diversity", "hybrid"]
    assert len({s.key for s in SCORED_STRATEGIES}) == len(SCORED_STRATEGIES)  # one image-info key each
    assert {s.kind for s in STRATEGY_REGISTRY.values()} == {"random", "uncertainty", "coverage", "hybrid"}
    with pytest.raises(ValueError, match=r"one of \('random', 'epistemic', 'tta', 'diversity', 'hybrid'\)"):
        get_strategy("entropy")
    with pytest.raises(ValueError, match="does not score images one by one"):
        score_images(None, [], strategy="diversity")  # never a silent fallback to another score
    with pytest.raises(ValueError, match="a score function is needed"):
        ActiveLearningStrategy("margin", "Smallest margin", "uncertainty", key="margin")
    with pytest.raises(ValueError, match="a score function is needed"):
        ActiveLearningStrategy("far", "Far and uncertain", "hybrid", key="far")
    with pytest.raises(ValueError, match="kind must be one of"):
        ActiveLearningStrategy("margin", "Smallest margin", "entropy", key="margin")


def test_arms_schedule_and_summary():
    assert [a.name for a in parse_arms("random,tta+pl,full", pseudo_label=True)] == [
        "random",
        "tta+pl",
        "full",
        "random+pl",
    ]
    with pytest.raises(ValueError, match="strategy must be one of"):
        Arm.parse("uncertain")
    assert set(STRATEGIES) == {"random", "epistemic", "tta", "diversity", "hybrid"}
    plan = RoundSchedule(epochs=2, samples=400).plan(2, 16)
    assert (plan.epochs, plan.samples_per_image) == (2, 12)
    assert RoundSchedule(epochs=2, samples=10).plan(3, 300).samples_per_image == 1
    assert labels_to_reach({8: [0.8, 0.9], 16: [0.95, 0.93]}, 0.9) == 16
    assert labels_to_reach({8: [0.8]}, 0.9) is None
    rows = [
        {"strategy": "full", "pseudo_label": False, "seed": 0, "round": 1, "n_labels": 10, "dice": 0.9},
        {"strategy": "random", "pseudo_label": False, "seed": 0, "round": 0, "n_labels": 2, "dice": 0.5},
        {"strategy": "random", "pseudo_label": False, "seed": 0, "round": 1, "n_labels": 4, "dice": 0.88},
    ]
    lines = summary_lines(rows, (0.95, 0.99))
    assert lines[0].startswith("full-data Dice: 0.9000")
    assert "95% of full-data Dice (0.8550): 4 labels" in lines[1]
    assert "99% of full-data Dice (0.8910): not reached with 4 labels" in lines[1]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """The sample data's 8 labelled images: 5 as the labelled pool, 3 for validation."""
    root = tmp_path_factory.mktemp("al")
    pairs, _ = split_studies_folder(SAMPLE_DATA)
    assert len(pairs) == 8
    out = {name: root / name for name in ("images", "labels", "val_images", "val_labels")}
    for index, pair in enumerate(sorted(pairs, key=lambda p: p["image"])):
        prefix = "" if index < 5 else "val_"
        for key in ("image", "label"):
            target = out[f"{prefix}{key}s"]
            target.mkdir(exist_ok=True)
            shutil.copy(pair[key], target / Path(pair[key]).name)
    return out


def simulate(folders: dict[str, Path], out: Path, strategies: str = ",".join(ARMS)) -> int:
    return main(
        [
            "simulate-al",
            "--images", str(folders["images"]),
            "--labels", str(folders["labels"]),
            "--val-images", str(folders["val_images"]),
            "--val-labels", str(folders["val_labels"]),
            "--start", "2",
            "--step", "2",
            "--rounds", "2",
            "--strategies", strategies,
            "--seeds", "0",
            "--input-size", "64",
            "--epochs", "1",
            "--samples", "8",
            "--batch-size", "4",
            "--mc-samples", "2",
            "--device", "cpu",
            "--threads", "1",
            "--no-progress",
            "--out", str(out),
        ]
    )  # fmt: skip


def test_two_round_simulation_writes_csv_curve_summary_and_resumes(folders, tmp_path, capsys):
    out = tmp_path / "al"
    assert simulate(folders, out) == 0
    printed = capsys.readouterr().out

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["strategy"] + ("+pl" if r["pseudo_label"] == "True" else ""), r["round"]) for r in rows} == {
        (arm, str(r)) for arm in ARMS for r in (0, 1)
    }
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    by_arm = {(r["strategy"], r["pseudo_label"], r["round"]): r for r in rows}
    assert {r["n_labels"] for r in rows if r["strategy"] != "full"} == {"2", "4"}
    assert {r["n_labels"] for r in rows if r["strategy"] == "full"} == {"5"}
    # round 0 is one shared training run: the same Dice for every strategy without pseudo-labels
    shared = {by_arm[(s, "False", "0")]["dice"] for s in STRATEGIES}
    assert len(shared) == 1

    records = {arm: [json.loads((out / "seed0" / arm / f"round{r}.json").read_text()) for r in (0, 1)] for arm in ARMS}
    start = records["random"][0]["labelled"]
    pool = sorted(str(p) for p in folders["images"].iterdir())
    for arm in PICKING_ARMS:
        first, second = records[arm]
        assert first["labelled"] == start  # the same start set for every strategy
        assert len(first["selected"]) == 2 and not set(first["selected"]) & set(start)
        assert second["labelled"] == start + first["selected"] and second["selected"] == []
        assert second["model"] != first["model"]
    assert records["random+pl"][0]["selected"] == records["random"][0]["selected"]  # paired random picks
    assert records["random+pl"][1]["pseudo_labels_accepted"] >= 0
    # tta picks the highest TTA disagreement under round 0's model: the app's own scoring function
    predictor = Predictor.from_file(records["tta"][0]["model"], device="cpu")
    unlabelled = [p for p in pool if p not in start]
    scores = score_images(predictor, unlabelled, strategy="tta")
    assert records["tta"][0]["selected"] == sorted(scores, key=lambda p: (-scores[p], p))[:2]
    # hybrid: k-center on the encoder features, each distance weighted by the rank of the same TTA disagreement
    features = encoder_features(predictor, unlabelled + start)
    weights = uncertainty_weights([scores[p] for p in unlabelled])
    picks = k_center_greedy(features[: len(unlabelled)], features[len(unlabelled) :], 2, weights)
    assert records["hybrid"][0]["selected"] == [unlabelled[i] for i in picks]

    summary = (out / "summary.txt").read_text()
    assert summary.startswith("full-data Dice: ")
    for arm in PICKING_ARMS:
        assert f"\n{arm}: mean Dice over rounds " in summary
        assert "97% of full-data Dice" in summary
    assert summary in printed
    curve = matplotlib.image.imread(out / "learning_curve.png")
    assert curve.ndim == 3 and curve.shape[0] > 100 and curve.shape[1] > 100

    # rerun: every round is read back, nothing trains again; a removed round is redone (and only that one)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("seed0/**/model.pt")}
    (out / "seed0" / "diversity" / "round1.json").unlink()
    assert simulate(folders, out) == 0
    changed = {p for p, stamp in stamps.items() if p.stat().st_mtime_ns != stamp}
    assert changed == {out / "seed0" / "diversity" / "round1" / "model.pt"}
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)


def test_bad_options_are_named(folders, tmp_path, capsys):
    assert simulate(folders, tmp_path / "x", strategies="random,uncertain") == 2
    assert "strategy must be one of" in capsys.readouterr().err
    code = main(
        ["simulate-al", "--images", str(folders["images"]), "--labels", str(folders["labels"]),
         "--val-images", str(folders["val_images"]), "--val-labels", str(folders["val_labels"]),
         "--start", "4", "--step", "2", "--rounds", "3", "--out", str(tmp_path / "y")]
    )  # fmt: skip
    assert code == 2
    assert "need 8 pool images, the pool has 5" in capsys.readouterr().err
