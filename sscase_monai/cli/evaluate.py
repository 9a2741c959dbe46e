"""``sscase-monai evaluate``: score a trained model on labelled images, as the paper reports it, with a report.

The scoring is :func:`sscase_monai.evaluation.evaluate_model`; the pictures are
:func:`sscase_monai.report.write_report`.
Heavy imports happen when the command runs, so ``sscase-monai --help`` stays quick.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sscase_monai.cli.predict import (
    add_head_label_argument,
    add_model_arguments,
    add_pixel_size_argument,
    load_predictor,
    pixel_size_lookup,
)

logger = logging.getLogger(__name__)

EVALUATION_CSV = "evaluation.csv"
"""Name of the per-image CSV when ``--csv`` is not given."""

REPORT_CASES = 3
"""How many best and worst cases by Dice the report shows."""

DESCRIPTION = f"""\
Predict every image in IMAGES with a trained model and compare it with the label of the same name in LABELS (a.png
<-> a.png or a.nii.gz). Each prediction is restored to its image's original size and scored there.

Printed: the paper's table (accuracy, precision, recall, Jaccard, Dice in %, plus HD95), once as the per-image mean
and once pooled over all pixels (the paper's notebook scores whole batches, i.e. pooled).

HD95 is in mm when every image has a pixel spacing: NIfTI/NRRD carry one (DICOM when it has one); PNG/JPEG get one
from a pixel-size table: --pixel-size-csv FILE (columns filename,pixel_size_mm) or, when not given, the first of
IMAGES/../pixel_size_and_hc.csv, IMAGES/../pixel_size.csv (the HC18 layout), the same names in IMAGES, or the sample
data's IMAGES/metadata.csv. If any image has none, HD95 is in pixels for all images; the table's header says which.

Labels are read with the model's classes: {{0, 1}} or {{0, 255}} for a binary model, {{0..K}} for K classes. Every
image and label is checked before the model runs; a missing, unreadable or wrongly-valued label is an error naming
the file.

Biometry (the columns of `sscase-monai predict`, for the prediction and, prefixed label_, the ground truth): per
label its pixels and area in mm^2; a model with a "cerebellum" label gets tcd_mm, a model with a head label
(--head-label) hc_mm, for images with a pixel spacing (TCD: largest width of the largest component, end points on
the outer pixel edges; HC: perimeter of the ellipse fitted to the head's boundary, leaks and bites left out), each
with tcd_reliable / hc_reliable and tcd_reasons / hc_reasons (why a measurement should not be trusted).
--reference-csv FILE (HC18's pixel_size_and_hc.csv: filename, head_circumference_mm) adds reference_hc_mm,
hc_abs_diff_mm and label_hc_abs_diff_mm and prints the mean absolute HC difference of the predictions and of the
ground-truth masks (the estimator's floor) from the reference, with the count over 5 mm, and again without the
predictions flagged unreliable.

Written:
  --csv FILE       per-image values (name, image, label, size, spacing, metrics as fractions, hd95 and its unit,
                   tp/fp/fn/tn, the biometry columns); default: REPORT/{EVALUATION_CSV} with --report, else
                   ./{EVALUATION_CSV}
  --report DIR     overlays of the {REPORT_CASES} best and {REPORT_CASES} worst images by Dice (image, ground truth,
                   prediction), a Dice histogram, learning curves per training stage from the history.csv beside the
                   model file (if any), and index.md / index.html listing them

Exit status: 0 on success; 2 for a bad argument, a missing model/folder/label, or an unusable image or label.

Example:
  sscase-monai evaluate --model runs/hc18/model.pt --images hc18/val/images --labels hc18/val/labels \\
      --tta --report runs/hc18/evaluation
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``evaluate`` on the ``sscase-monai`` command."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score a trained model on labelled images (paper-style table, per-image CSV, optional report)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument("--images", required=True, type=Path, metavar="DIR", help="folder of images")
    parser.add_argument("--labels", required=True, type=Path, metavar="DIR", help="folder of labels (same names)")
    parser.add_argument(
        "--csv",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"per-image CSV (default: REPORT/{EVALUATION_CSV} with --report, else ./{EVALUATION_CSV})",
    )
    parser.add_argument(
        "--report", type=Path, default=None, metavar="DIR", help="write overlays, histogram, learning curves here"
    )
    add_pixel_size_argument(parser)
    add_head_label_argument(parser)
    parser.add_argument(
        "--reference-csv",
        type=Path,
        default=None,
        metavar="FILE",
        help="reference head circumferences (columns filename,head_circumference_mm: HC18's "
        "pixel_size_and_hc.csv): report the mean absolute HC difference in mm",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table, write the CSV (and the report)."""
    from sscase_monai.data import pair_images_with_labels, validate_labelled_pairs
    from sscase_monai.evaluation import evaluate_model, format_hc_agreement, read_reference_csv
    from sscase_monai.model_files import ARCHITECTURE_TITLES

    pairs = pair_images_with_labels(args.images, args.labels)
    predictor = load_predictor(args)
    validate_labelled_pairs(pairs, num_classes=predictor.spec.num_classes)
    lookup, lookup_path = pixel_size_lookup(args.pixel_size_csv, args.images)
    reference = read_reference_csv(args.reference_csv) if args.reference_csv is not None else None
    result = evaluate_model(
        predictor,
        pairs,
        tta=args.tta,
        spacing_lookup=lookup,
        batch_size=args.batch_size,
        keep_cases=REPORT_CASES if args.report else 0,
        head_labels=args.head_label,
        reference_hc=reference,
    )
    name = ARCHITECTURE_TITLES[predictor.spec.architecture] + (" + TTA" if args.tta else "")
    table = result.table(name=name)
    print(f"{len(result.records)} image(s), model {args.model}, device {predictor.device}")
    print(table, end="")
    print(result.hd95_note())
    if result.hc_reference is not None:
        print(format_hc_agreement(result.hc_reference))
    csv_path = args.csv or (args.report / EVALUATION_CSV if args.report else Path(EVALUATION_CSV))
    result.write_csv(csv_path)
    print(f"per-image values: {csv_path}")
    if args.report:
        from sscase_monai.report import write_report

        details = {
            "images": str(args.images),
            "labels": str(args.labels),
            "test-time augmentation": "yes" if args.tta else "no",
            "per-image values": str(csv_path),
        }
        if lookup_path is not None:
            details["pixel sizes"] = str(lookup_path)
        index = write_report(result, args.report, table=table, model_path=args.model, details=details)
        print(f"report: {index}")
    return 0
