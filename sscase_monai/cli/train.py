"""``sscase-monai train``: the method's three-stage semi-supervised training from image and label folders.

The training itself is :class:`sscase_monai.training.SemiSupervisedTrainer` (the MONAI Label app runs the same).
Heavy imports happen when the command runs, so ``sscase-monai --help`` stays quick.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
from pathlib import Path
from typing import Any

from sscase_monai.cli.predict import INPUT_SIZE_HELP, input_size, parse_device, positive_int
from sscase_monai.method import (
    BATCH_SIZE,
    DEFAULT_STAGES,
    PSEUDO_LABELS,
    SAMPLES_PER_IMAGE,
    STAGE_NAMES,
    short_number,
    stage_values,
)

logger = logging.getLogger(__name__)

ENCODERS: tuple[str, ...] = ("efficientnet-lite0", "efficientnet-b0")

DESCRIPTION = """\
Train SS_CASE_UNet with the method's three stages, each with its own Adam learning rate, early stopping on the
validation loss (best weights restored) and learning rate halved on plateaus:

{stages}
           (the stage-2 model predicts --unlabeled; its masks join the labelled images when they have
           {pseudo_labels})

Labels match images by file name without extension (a.png <-> a.nii.gz); values {{0,1}} or {{0,255}} (binary) or
{{0..K}} (K classes, with --labels-json or --label-names). Every image and label is checked before training starts:
a missing or unreadable file, a label of another size or with other values is an error naming the file. Without
--val-images/--val-labels, --val-fraction of the labelled images (whole exams: NNN_HC, NNN_2HC together) validate.

Written to OUT:
  model.pt (+ model.json)        the final model (the last stage's best): sscase-monai predict/evaluate --model
  stage{{1,2,3}}_best.pt           each stage's best model
  history.csv                    per epoch: stage, epoch, losses, validation Dice, learning rate, time, images/s
  metrics.json                   each stage's best epoch and validation metrics (on the images' own grids)
  pseudo_labels/, pseudo_labels.csv   stage 3's accepted masks (image's format and geometry) and every verdict
  checkpoints/last.pt            resume state after the last finished epoch (--resume continues it)
  tensorboard/                   tensorboard --logdir OUT/tensorboard

Several GPUs: torchrun --nproc_per_node N -m sscase_monai train ... (one process per GPU; --batch-size is per GPU).

Exit status: 0 when training finished; 2 for a bad argument or unusable data; 130 when interrupted (--resume
continues from the last finished epoch).

Examples:
  sscase-monai train --images hc18/train/images --labels hc18/train/labels --val-images hc18/val/images \\
      --val-labels hc18/val/labels --unlabeled hc18/unlabeled/images --out runs/hc18
  sscase-monai train --images psfhs/images --labels psfhs/labels --label-names pubic_symphysis,fetal_head \\
      --stages 1,2 --epochs 10,20 --out runs/psfhs
"""


def _stage_table() -> str:
    """The method's stages as the help text shows them (one line each)."""
    return "\n".join(
        f"  stage {number}  {STAGE_NAMES[number]:<20}  {'encoder frozen' if number == 1 else 'all layers':<18}"
        f"  lr {short_number(stage.lr)}  {stage.epochs} epochs  patience {stage.patience}"
        for number, stage in enumerate(DEFAULT_STAGES, start=1)
    )


def _number_list(kind: type, text: str, what: str) -> tuple[Any, ...]:
    try:
        values = tuple(kind(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        values = ()
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
    return values


def int_list(text: str) -> tuple[int, ...]:
    """``"20,50,30"`` -> ``(20, 50, 30)`` (argparse type)."""
    return _number_list(int, text, "whole numbers")


def float_list(text: str) -> tuple[float, ...]:
    """``"1e-4,1e-5,5e-6"`` -> floats (argparse type)."""
    return _number_list(float, text, "numbers")


def fraction(text: str) -> float:
    """A number in [0, 1] (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``train`` on the ``sscase-monai`` command."""
    parser = subparsers.add_parser(
        "train",
        help="train SS_CASE_UNet (decoder-only, full fine-tune, pseudo-label retrain) from image/label folders",
        description=DESCRIPTION.format(stages=_stage_table(), pseudo_labels=PSEUDO_LABELS.describe()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--images", type=Path, metavar="DIR", help="labelled images")
    data.add_argument("--labels", type=Path, metavar="DIR", help="their labels (same names)")
    data.add_argument(
        "--studies",
        type=Path,
        metavar="DIR",
        help="instead of --images/--labels/--unlabeled: a MONAI Label studies folder (images at its top level, "
        "final labels in DIR/labels/final; images without a label are the unlabelled pool), as the server trains",
    )
    data.add_argument("--val-images", type=Path, metavar="DIR", help="validation images (default: split --images)")
    data.add_argument("--val-labels", type=Path, metavar="DIR", help="validation labels")
    data.add_argument(
        "--val-fraction",
        type=fraction,
        default=0.2,
        metavar="F",
        help="without --val-images: share of the labelled images (whole exams) held out (default: 0.2)",
    )
    data.add_argument("--unlabeled", type=Path, metavar="DIR", help="unlabelled images for stage 3's pseudo-labels")
    data.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created)")

    model = parser.add_argument_group("model")
    model.add_argument("--encoder", choices=ENCODERS, default="efficientnet-lite0", help="(default: %(default)s)")
    model.add_argument(
        "--pretrained",
        nargs="?",
        const=True,
        default=None,
        metavar="FILE",
        help="ImageNet encoder weights: alone for lite0's bundled weights (the default for lite0), or an encoder "
        "state dict FILE (for b0: MONAI's efficientnet-b0 weights; b0 starts from random weights without it)",
    )
    model.add_argument(
        "--no-pretrained", dest="pretrained", action="store_const", const=False, help="random encoder weights"
    )
    model.add_argument("--init-weights", type=Path, metavar="FILE", help="start from a trained model file instead")
    names = model.add_mutually_exclusive_group()
    names.add_argument("--labels-json", metavar="JSON", help="label names and values, e.g. '{\"cerebellum\": 1}'")
    names.add_argument("--label-names", metavar="A,B", help="label names for values 1, 2, ... (default: cerebellum)")
    model.add_argument("--input-size", type=input_size, default=256, metavar="N", help=INPUT_SIZE_HELP)
    model.add_argument("--no-denoise", action="store_true", help="skip the method's 5x5 median filter")

    schedule = parser.add_argument_group("schedule")
    schedule.add_argument(
        "--stages", type=int_list, default=None, metavar="1,2,3", help="stages to run (default: 1,2,3 with "
        "--unlabeled, else 1,2)"
    )  # fmt: skip
    schedule.add_argument(
        "--epochs", type=int_list, metavar="E1,E2,E3", help=f"epochs per stage (default: {stage_values('epochs')})"
    )
    schedule.add_argument("--lr", type=float_list, metavar="L1,L2,L3", help=f"learning rates ({stage_values('lr')})")
    schedule.add_argument(
        "--patience", type=int_list, metavar="P1,P2,P3", help=f"early stopping ({stage_values('patience')})"
    )
    schedule.add_argument(
        "--batch-size", type=positive_int, default=BATCH_SIZE, metavar="B", help="images per step (%(default)s)"
    )
    schedule.add_argument(
        "--samples-per-image",
        type=positive_int,
        default=SAMPLES_PER_IMAGE,
        metavar="N",
        help="augmented draws per image and epoch (%(default)s)",
    )
    schedule.add_argument(
        "--consistency-weight", type=float, default=0.0, metavar="W", help="MSE consistency on unlabelled (0: off)"
    )
    schedule.add_argument(
        "--cutout-prob",
        type=fraction,
        default=0.0,
        metavar="P",
        help="occlude a training image with 1-2 blank rectangles, label kept, with this probability (0: off)",
    )
    schedule.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (0)")

    pseudo = parser.add_argument_group("stage 3 pseudo-labels")
    for flag, kind, name, metavar, what in (
        ("--pseudo-confidence", fraction, "confidence", "P", "confident pixel"),
        ("--pseudo-min-fraction", fraction, "min_confident_fraction", "F", "keep above this confident share"),
        ("--pseudo-min-pixels", int, "min_foreground_pixels", "N", "min foreground pixels"),
    ):
        default = getattr(PSEUDO_LABELS, name)
        pseudo.add_argument(flag, type=kind, default=default, metavar=metavar, help=f"{what} (%(default)s)")
    pseudo.add_argument("--pseudo-tta", action="store_true", help="predict with test-time augmentation")

    run_group = parser.add_argument_group("run")
    run_group.add_argument("--device", type=parse_device, default="auto", help="auto, cpu, cuda or cuda:N")
    run_group.add_argument("--workers", type=int, default=0, metavar="N", help="DataLoader workers (0)")
    run_group.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    run_group.add_argument("--resume", action="store_true", help="continue OUT/checkpoints/last.pt")
    run_group.add_argument("--no-progress", action="store_true", help="no progress bar")
    run_group.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files")
    run_group.add_argument(
        "--export",
        type=Path,
        metavar="FILE",
        help="also save the final model as FILE (+ .json sidecar recording this command), float16 with --export-half",
    )
    run_group.add_argument("--export-half", action="store_true", help="store --export in float16 (half the size)")
    parser.set_defaults(func=run)
    return parser


def parse_labels(args: argparse.Namespace) -> dict[str, int]:
    """``--labels-json`` / ``--label-names`` -> ``{name: value}`` (default ``{"cerebellum": 1}``).

    Raises:
        ValueError: not a JSON object of names to whole numbers, or empty names.
    """
    if args.labels_json:
        try:
            labels = json.loads(args.labels_json)
        except json.JSONDecodeError as e:
            raise ValueError(f'--labels-json must be JSON like {{"cerebellum": 1}}, got {args.labels_json!r}') from e
        if not isinstance(labels, dict) or not labels or not all(isinstance(v, int) for v in labels.values()):
            raise ValueError(f'--labels-json must map names to values like {{"cerebellum": 1}}, got {labels!r}')
        return {str(k): int(v) for k, v in labels.items()}
    if args.label_names:
        names = [n.strip() for n in args.label_names.split(",")]
        if not all(names) or len(set(names)) != len(names):
            raise ValueError(f"--label-names must be distinct non-empty names, got {args.label_names!r}")
        return {name: value for value, name in enumerate(names, start=1)}
    return {"cerebellum": 1}


def resolve_pretrained(args: argparse.Namespace) -> bool | str:
    """The encoder initialisation: lite0's bundled ImageNet weights by default; b0 needs a file for its weights."""
    if args.pretrained is None:
        if args.encoder == "efficientnet-b0" and args.init_weights is None:
            logger.warning("efficientnet-b0 starts from random weights; give --pretrained FILE for ImageNet weights")
        return args.encoder == "efficientnet-lite0"
    if isinstance(args.pretrained, str):
        if not Path(args.pretrained).is_file():
            raise FileNotFoundError(f"--pretrained {args.pretrained}: no such file")
        return args.pretrained
    return bool(args.pretrained)


def collect_items(args: argparse.Namespace, seed: int) -> tuple[list, list, list]:
    """Training, validation and unlabelled items from the folders (labels paired by file stem).

    Raises:
        FileNotFoundError: a missing folder.
        ValueError: an empty folder, images without labels, or no validation images.
    """
    from sscase_monai.data import find_images, pair_images_with_labels, split_by_exam, split_studies_folder

    if args.studies is not None:
        if args.images is not None or args.labels is not None or args.unlabeled is not None:
            raise ValueError("give either --studies or --images/--labels[/--unlabeled], not both")
        pairs, unlabelled_items = split_studies_folder(args.studies)
        if not pairs:
            raise ValueError(f"{args.studies} has no image with a final label in {args.studies / 'labels' / 'final'}")
        args.images = args.studies
    elif args.images is None or args.labels is None:
        raise ValueError("give --images and --labels (or --studies)")
    else:
        pairs, unlabelled_items = pair_images_with_labels(args.images, args.labels), None
    if (args.val_images is None) != (args.val_labels is None):
        raise ValueError("give both --val-images and --val-labels, or neither (then --val-fraction splits --images)")
    if args.val_images is not None:
        train, val = pairs, pair_images_with_labels(args.val_images, args.val_labels)
    else:
        train, val = split_by_exam(pairs, args.val_fraction, seed=seed)
        if not val:
            raise ValueError(
                f"no validation images: {len(pairs)} labelled image(s) in {args.images} and --val-fraction "
                f"{args.val_fraction}; give --val-images/--val-labels or more labelled images (of two exams or more)"
            )
        logger.info(
            "validation: %d of %d labelled image(s) (--val-fraction %g)", len(val), len(pairs), args.val_fraction
        )
    if unlabelled_items is not None:
        return train, val, unlabelled_items
    unlabeled = [{"image": str(p)} for p in find_images(args.unlabeled)] if args.unlabeled is not None else []
    return train, val, unlabeled


def build_config(args: argparse.Namespace) -> Any:
    """The :class:`~sscase_monai.training.TrainingConfig` of the command line.

    Raises:
        ValueError: an option out of range.
    """
    from sscase_monai.model_files import ModelSpec
    from sscase_monai.training import PseudoLabelConfig, TrainingConfig

    spec = ModelSpec.for_labels(
        parse_labels(args), encoder=args.encoder, input_size=args.input_size, denoise=not args.no_denoise
    )
    stages = args.stages or ((1, 2, 3) if args.unlabeled is not None or args.studies is not None else (1, 2))
    if args.init_weights is not None and not args.init_weights.is_file():
        raise FileNotFoundError(f"--init-weights {args.init_weights}: no such file")
    config = TrainingConfig(
        spec=spec,
        pretrained=resolve_pretrained(args),
        init_weights=str(args.init_weights) if args.init_weights else None,
        run_stages=stages,
        batch_size=args.batch_size,
        samples_per_image=args.samples_per_image,
        num_workers=args.workers,
        device=args.device,
        amp=not args.no_amp,
        seed=args.seed,
        consistency_weight=args.consistency_weight,
        cutout_prob=args.cutout_prob,
        pseudo_labels=PseudoLabelConfig(
            confidence=args.pseudo_confidence,
            min_confident_fraction=args.pseudo_min_fraction,
            min_foreground_pixels=args.pseudo_min_pixels,
            tta=args.pseudo_tta,
        ),
        progress=not args.no_progress,
        tensorboard=not args.no_tensorboard,
        resume=args.resume,
    )
    return config.with_stage_settings(epochs=args.epochs, lr=args.lr, patience=args.patience)


def run(args: argparse.Namespace) -> int:
    """Train; print where the model is and the stages' validation metrics."""
    from sscase_monai.training import SemiSupervisedTrainer

    if int(os.environ.get("RANK", "0") or 0) != 0:  # torchrun: one process speaks
        logging.getLogger().setLevel(logging.WARNING)
    config = build_config(args)
    train, val, unlabeled = collect_items(args, config.seed)
    trainer = SemiSupervisedTrainer(config, train, val, unlabeled, args.out)
    result = trainer.run()
    if not result.is_main:
        return 0
    if result.stopped or result.model_path is None:
        print(f"training stopped before the end; continue with --resume (checkpoint in {args.out / 'checkpoints'})")
        return 0
    last = result.stages[max(result.stages)]
    print(
        f"model: {result.model_path} (stage {last.stage} {last.name}, best epoch {last.best_epoch}, "
        f"val loss {last.best_val_loss:.4f}, val Dice {100 * last.best_val_dice:.2f}%)"
    )
    if result.pseudo_labels:
        accepted = sum(r.accepted for r in result.pseudo_labels)
        print(f"pseudo-labels: {accepted} of {len(result.pseudo_labels)} unlabelled image(s) accepted")
    metrics = result.final_metrics or {}
    print(f"validation metrics of each stage's best model ({metrics.get('num_images', '?')} images, original size):")
    print(result.metrics_table(), end="")
    print(f"history: {args.out / 'history.csv'}; TensorBoard: {args.out / 'tensorboard'}")
    if args.export is not None:
        export_model(result, config, args.export, args.export_half, args.argv)
        print(f"exported: {args.export}")
    return 0


def export_model(result: Any, config: Any, path: Path, half: bool, argv: list[str]) -> None:
    """Save the run's final model elsewhere, with the command line and validation Dice in its sidecar."""
    import torch

    from sscase_monai.model_files import read_sidecar, save_model

    state = torch.load(result.model_path, map_location="cpu", weights_only=True)
    extra = {
        **{k: v for k, v in read_sidecar(result.model_path).items() if k not in ("format", "spec", "half")},
        "command": "sscase-monai " + " ".join(shlex.quote(a) for a in argv),
        "best_val_dice": result.best_val_dice,
    }
    save_model(path, state, config.spec, half=half, extra=extra)
