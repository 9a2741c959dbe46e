"""``sscase-monai simulate-al``: replay active learning on a labelled set and plot Dice vs labels per strategy.

The simulation is :class:`sscase_monai.al_simulation.ActiveLearningSimulation`; the strategies pick with
:func:`sscase_monai.active_learning.select_batch` (the MONAI Label app's scoring functions). Heavy imports happen
when the command runs, so ``sscase-monai --help`` stays quick.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sscase_monai.active_learning import LABEL_TARGETS, STRATEGIES, STRATEGY_REGISTRY
from sscase_monai.cli.predict import INPUT_SIZE_HELP, input_size, parse_device, positive_int
from sscase_monai.cli.train import float_list, int_list
from sscase_monai.method import BATCH_SIZE

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Replay the Slicer loop on a labelled set with a simulated annotator. Each strategy and seed starts from the same
--start labelled images (a seeded draw from --images); each round trains (round 0: stages 1 and 2 from the ImageNet
encoder, shared by every strategy of the seed; later rounds warm-start from the previous round's model and run
stage 2, plus stage 3 on the rest of the pool with pseudo-labelling), records the validation Dice of the round's
model (per-image mean on each image's own grid), then the strategy picks --step pool images whose labels are
revealed.

Strategies (the app's names and scoring functions):
{strategies}
NAME+pl pseudo-labels the rest of the pool each round (stage 3).

Written to OUT (rerunning the same command skips finished rounds; other arms or seeds can be added later):
  results.csv            strategy, pseudo_label, seed, round, n_labels, dice, dice_pooled, hd95 (mm where the
                         image files carry a spacing, else pixels), accepted pseudo-labels, timings
  learning_curve.png     Dice vs labels: mean over seeds, band = min-max, one line per strategy
  summary.txt            labels needed to reach --targets of the full-data Dice, per strategy
  seed{{S}}/{{arm}}/round{{R}}.json + round{{R}}/   each finished round and its training run

Example:
  sscase-monai simulate-al --images hc18/train/images --labels hc18/train/labels --val-images hc18/val/images \\
      --val-labels hc18/val/labels --start 8 --step 8 --rounds 6 --strategies random,hybrid,full \\
      --seeds 0,1,2 --input-size 128 --epochs 2 --samples 1024 --out runs/al
"""


FULL_DESCRIPTION = "The reference: every pool image labelled from round 0 (its last round's Dice is the full-data Dice)"


def _strategy_lines() -> str:
    described = [(s.name, s.description) for s in STRATEGY_REGISTRY.values()] + [("full", FULL_DESCRIPTION)]
    width = max(len(name) for name, _ in described)
    return "\n".join(f"  {name + ':':<{width + 1}} {description}" for name, description in described)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``simulate-al`` on the ``sscase-monai`` command."""
    parser = subparsers.add_parser(
        "simulate-al",
        help="simulate active learning on a labelled set: Dice vs labels per strategy (CSV, PNG, summary)",
        description=DESCRIPTION.format(strategies=_strategy_lines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--images", required=True, type=Path, metavar="DIR", help="the labelled pool's images")
    data.add_argument("--labels", required=True, type=Path, metavar="DIR", help="their labels (the annotator)")
    data.add_argument("--val-images", required=True, type=Path, metavar="DIR", help="validation images")
    data.add_argument("--val-labels", required=True, type=Path, metavar="DIR", help="validation labels")
    data.add_argument("--val-limit", type=positive_int, metavar="N", help="validate on the first N (by name)")
    data.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created; resumable)")

    loop = parser.add_argument_group("active learning")
    loop.add_argument("--start", type=positive_int, default=8, metavar="N", help="labels of round 0 (8)")
    loop.add_argument("--step", type=positive_int, default=8, metavar="K", help="labels added per round (8)")
    loop.add_argument("--rounds", type=positive_int, default=5, metavar="R", help="training rounds (5)")
    loop.add_argument(
        "--strategies",
        default="random,epistemic,tta",
        metavar="A,B",
        help=f"{', '.join(STRATEGIES)}, full; NAME+pl with pseudo-labelling (random,epistemic,tta)",
    )
    loop.add_argument("--pseudo-label", action="store_true", help="also run every strategy with pseudo-labelling")
    loop.add_argument("--seeds", type=int_list, default=(0,), metavar="0,1,2", help="one simulation per seed (0)")
    loop.add_argument("--pool-limit", type=positive_int, metavar="N", help="score a seeded draw of N pool images")
    loop.add_argument("--mc-samples", type=positive_int, default=8, metavar="N", help="MC-dropout passes (8)")
    loop.add_argument(
        "--targets",
        type=float_list,
        default=LABEL_TARGETS,
        metavar="0.97,0.99",
        help=f"shares of the full-data Dice ({','.join(f'{t:g}' for t in LABEL_TARGETS)})",
    )

    schedule = parser.add_argument_group("training of each round")
    schedule.add_argument("--input-size", type=input_size, default=256, metavar="N", help=INPUT_SIZE_HELP)
    schedule.add_argument("--epochs", type=positive_int, default=2, metavar="E", help="epochs per stage (2)")
    schedule.add_argument(
        "--samples", type=positive_int, default=400, metavar="N", help="training samples per stage (400)"
    )
    schedule.add_argument(
        "--lr", type=float_list, default=(1e-3, 3e-4, 1e-4), metavar="L1,L2,L3", help="stage LRs (1e-3,3e-4,1e-4)"
    )
    schedule.add_argument(
        "--batch-size", type=positive_int, default=BATCH_SIZE, metavar="B", help="images per step (%(default)s)"
    )
    schedule.add_argument("--device", type=parse_device, default="auto", help="auto, cpu, cuda or cuda:N")
    schedule.add_argument(
        "--threads", type=positive_int, metavar="N", help="torch CPU threads (default: torch's; 1 on a busy CPU)"
    )
    schedule.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def build_simulation(args: argparse.Namespace):  # noqa: ANN201  (heavy import)
    """The :class:`~sscase_monai.al_simulation.ActiveLearningSimulation` of the command line.

    Raises:
        ValueError: an option out of range, or unusable folders.
    """
    from sscase_monai.al_simulation import ActiveLearningSimulation, RoundSchedule, SimulationConfig, parse_arms
    from sscase_monai.data import pair_images_with_labels
    from sscase_monai.model_files import ModelSpec
    from sscase_monai.training import TrainingConfig

    pool = pair_images_with_labels(args.images, args.labels)
    val = sorted(pair_images_with_labels(args.val_images, args.val_labels), key=lambda i: Path(i["image"]).name)
    if args.val_limit is not None:
        val = val[: args.val_limit]
    training = TrainingConfig(
        spec=ModelSpec(input_size=args.input_size),
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
        tensorboard=False,
    ).with_stage_settings(lr=args.lr)
    config = SimulationConfig(
        start=args.start,
        step=args.step,
        rounds=args.rounds,
        arms=tuple(parse_arms(args.strategies, args.pseudo_label)),
        seeds=args.seeds,
        training=training,
        schedule=RoundSchedule(args.epochs, args.samples),
        pool_limit=args.pool_limit,
        mc_samples=args.mc_samples,
        targets=args.targets,
    )
    return ActiveLearningSimulation(config, pool, val, args.out, progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    """Simulate; print the summary and where the outputs are."""
    import torch

    from sscase_monai.al_simulation import CURVE_PNG, RESULTS_CSV, SUMMARY_TXT

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    simulation = build_simulation(args)
    rows = simulation.run()
    print((args.out / SUMMARY_TXT).read_text(), end="")
    print(f"{len(rows)} round(s): {args.out / RESULTS_CSV}; curve: {args.out / CURVE_PNG}")
    return 0
