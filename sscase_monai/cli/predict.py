"""``sscase-monai predict``: segment images with a trained model and write one mask per image.

The model-loading options (``--model``, ``--tta``, ``--device``, ``--batch-size``) and the pixel-size table option
are shared with ``sscase-monai evaluate``. Heavy imports (torch, MONAI) happen when the command runs, so
``sscase-monai --help`` stays quick.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sscase_monai.method import PSEUDO_LABELS, TTA_VIEWS
from sscase_monai.paths import existing_file

if TYPE_CHECKING:
    from sscase_monai.evaluation import SpacingLookup
    from sscase_monai.inference import Prediction, Predictor
    from sscase_monai.model_files import ModelSpec

logger = logging.getLogger(__name__)

PREDICTIONS_CSV = "predictions.csv"
"""The per-image summary ``predict`` writes into its output folder."""

PROBABILITIES_DIR = "probabilities"
"""Sub-folder of the output folder for ``--probabilities``."""

EXIT_PARTIAL = 1
"""Exit status when some images could not be segmented (the others were)."""

DESCRIPTION = """\
Segment 2-D ultrasound images with a trained SS_CASE_UNet and write one mask per image into OUT, on the image's
own grid (the prediction is made at the network's input size and restored to the original size):

  NIfTI (W x H x 1 or 2-D)  -> NIfTI with the same size, spacing, origin and direction
  NRRD                      -> NRRD with the same geometry
  PNG                       -> PNG
  JPEG                      -> PNG (lossless label values)
  DICOM                     -> NRRD with the DICOM's geometry

Mask values are the model's label values (uint8; 0 = background; see the model's model.json). The mask keeps the
image's file name without extension (a.nii.gz -> OUT/a.nii.gz, b.jpg -> OUT/b.png).

OUT/predictions.csv has one row per image: file, mask, pixel spacing and where it came from (file / table / none),
per label its pixel count and area in mm^2 (empty when the spacing is unknown), tcd_mm (the transverse cerebellar
diameter: the largest width of the largest cerebellum component, end points on the outer pixel edges, i.e. its
maximum Feret diameter; for a label named "cerebellum"), hc_mm (the head circumference: Ramanujan perimeter of the
ellipse fitted to the head label's boundary, leaks and bites left out; the first of --head-label the model has),
both empty when the spacing is unknown, each with tcd_reliable / hc_reliable (False when the measurement should not
be trusted) and tcd_reasons / hc_reasons (why, e.g. "head mask touches the image edge"), confidence_fraction
(share of pixels whose class probability is >= {confidence}), and error (why an image was skipped). The
measurement columns are those of `sscase-monai evaluate`.

PNG and JPEG carry no pixel spacing: give one with --pixel-size-csv FILE (columns filename,pixel_size_mm, as HC18's
pixel_size_and_hc.csv). Without it, a table is looked for as in `sscase-monai evaluate` (pixel_size_and_hc.csv or
pixel_size.csv beside or in the images folder, or the sample data's metadata.csv in it).

Exit status: 0 when every image was segmented; 1 when some images could not be read (each is reported on stderr and
in predictions.csv, and every other image is still segmented); 2 for a bad argument, a missing or unusable model, a
missing folder, or output names that would clash or overwrite an input.

Example:
  sscase-monai predict --model runs/hc18/model.pt --images scans/ --out masks/ --tta
"""


def parse_device(text: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (argparse type)."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text.strip().lower()):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text.strip().lower()


def positive_int(text: str) -> int:
    """A whole number >= 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def input_size(text: str) -> int | tuple[int, int]:
    """A network input: ``N`` or ``HEIGHTxWIDTH``, each a multiple of 32 (argparse type)."""
    from sscase_monai.transforms import parse_input_size

    try:
        return parse_input_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


INPUT_SIZE_HELP = "network input: a side, or HEIGHTxWIDTH, multiples of 32 (256; 256x384 keeps 800x540's aspect)"
"""Help of ``--input-size`` (``train`` and ``simulate-al``)."""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--tta``, ``--device``, ``--batch-size`` (shared by ``predict`` and ``evaluate``)."""
    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        metavar="CKPT",
        help="trained model file (model.pt; its model.json sidecar beside it says how to rebuild it)",
    )
    parser.add_argument(
        "--tta",
        action="store_true",
        help=f"test-time augmentation: average the views {', '.join(TTA_VIEWS)} ({len(TTA_VIEWS)}x slower)",
    )
    parser.add_argument(
        "--device",
        type=parse_device,
        default="auto",
        help="auto (CUDA when available, default), cpu, cuda or cuda:N",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, metavar="B", help="images per forward pass (default: 8)"
    )


def add_pixel_size_argument(parser: argparse.ArgumentParser) -> None:
    """``--pixel-size-csv`` (shared by ``predict`` and ``evaluate``)."""
    parser.add_argument(
        "--pixel-size-csv",
        type=Path,
        default=None,
        metavar="FILE",
        help="pixel sizes of images without a spacing of their own (PNG/JPEG): columns filename,pixel_size_mm "
        "(HC18's pixel_size_and_hc.csv); default: pixel_size_and_hc.csv or pixel_size.csv found beside or in the "
        "images folder, or the sample data's metadata.csv in it",
    )


def add_head_label_argument(parser: argparse.ArgumentParser) -> None:
    """``--head-label`` (shared by ``predict`` and ``evaluate``)."""
    from sscase_monai.biometry import HEAD_LABELS, parse_label_names

    parser.add_argument(
        "--head-label",
        type=parse_label_names,
        default=HEAD_LABELS,
        metavar="NAMES",
        help="label name(s) whose head circumference (hc_mm) is reported, comma-separated, first match wins; "
        f"none: no HC (default: {','.join(HEAD_LABELS)})",
    )


def load_predictor(args: argparse.Namespace) -> Predictor:
    """The predictor for ``--model``/``--device``/``--tta``.

    Raises:
        FileNotFoundError: no model file.
        ValueError: CUDA asked for but not available, or the model file does not fit its sidecar.
    """
    import torch

    from sscase_monai.inference import Predictor

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available on this machine (use --device cpu)")
    existing_file(args.model, "model file")
    return Predictor.from_file(args.model, device=args.device, tta=args.tta)


def pixel_size_lookup(csv_path: Path | None, images: Path) -> tuple[SpacingLookup | None, Path | None]:
    """The pixel sizes of ``--pixel-size-csv``, or of the table found for ``images``; ``(None, None)`` if none."""
    from sscase_monai.evaluation import find_pixel_size_csv, read_pixel_size_csv

    path = csv_path if csv_path is not None else find_pixel_size_csv(images)
    if path is None:
        return None, None
    lookup = read_pixel_size_csv(path)
    logger.info("pixel sizes of %d image(s) from %s", len(lookup), path)
    return lookup, path


def list_input_images(images: Path) -> list[Path]:
    """``--images``: one image file, or the image files directly in a folder.

    Raises:
        FileNotFoundError: no such file or folder.
        ValueError: a file that is not an image type, or a folder without images.
    """
    from sscase_monai import io
    from sscase_monai.data import find_images

    if images.is_file():
        if not io.is_image_file(images):
            raise ValueError(f"{images}: not an image file (expected one of {', '.join(io.IMAGE_EXTENSIONS)})")
        return [images]
    if not images.exists():
        raise FileNotFoundError(f"{images}: no such file or folder")
    return find_images(images)


def plan_outputs(images: Sequence[Path], out_dir: Path) -> dict[Path, Path]:
    """The mask path of every image, refusing two images that would write one file or a mask over an input.

    Raises:
        ValueError: a clash (names both images) or an output that is an input image.
    """
    from sscase_monai.inference import prediction_path

    outputs: dict[Path, Path] = {}
    claimed: dict[Path, Path] = {}
    inputs = {image.resolve() for image in images}
    for image in images:
        target = prediction_path(image, out_dir)
        key = target.resolve()
        if key in claimed:
            raise ValueError(f"{claimed[key]} and {image} would both be written to {target}; rename one of them")
        if key in inputs:
            raise ValueError(f"the mask of {image} would overwrite the input image {target}; choose another --out")
        claimed[key] = image
        outputs[image] = target
    return outputs


def write_probabilities(prediction: Prediction, spec: ModelSpec, mask_path: Path, out_dir: Path) -> list[Path]:
    """Each foreground class's probability map beside the masks, in ``OUT/probabilities/``.

    NIfTI/NRRD get float32 maps with the image's geometry; PNG gets 8-bit maps (probability x 255). Binary models
    write ``<stem>.<ext>``, multi-class models ``<stem>_<label>.<ext>`` per label.
    """
    import numpy as np
    import SimpleITK as sitk

    from sscase_monai import io

    extension = io.image_extension(mask_path)
    stem = io.image_stem(mask_path)
    names = {value: name for name, value in spec.labels.items()}
    probabilities = prediction.probabilities
    if probabilities.shape[0] == 1:
        maps = [(f"{stem}{extension}", probabilities[0])]
    else:
        maps = [
            (f"{stem}_{names.get(c, f'class{c}')}{extension}", probabilities[c]) for c in range(1, len(probabilities))
        ]
    written = []
    for name, probability in maps:
        path = out_dir / PROBABILITIES_DIR / name
        if extension == ".png":
            written.append(io.write_mask(np.round(probability * 255.0).astype(np.uint8), prediction.geometry, path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            image = io.mask_to_image(probability.astype(np.float32), prediction.geometry)
            sitk.WriteImage(image, str(path), useCompression=True)
            written.append(path)
    return written


def prediction_row(
    path: Path,
    prediction: Prediction | None,
    mask_path: Path | None,
    spec: ModelSpec,
    spacing: tuple[float, float] | None,
    source: str,
    error: str = "",
    head_labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """One row of ``predictions.csv`` (the same columns for a skipped image, left empty).

    The measurement columns are :func:`sscase_monai.biometry.biometry_columns`, the ones ``evaluate`` writes.
    """
    from sscase_monai.biometry import HEAD_LABELS, biometry_columns

    row: dict[str, Any] = {
        "file": str(path),
        "mask": str(mask_path) if mask_path else "",
        "spacing_row_mm": spacing[0] if spacing else "",
        "spacing_col_mm": spacing[1] if spacing else "",
        "spacing_source": source,
    }
    heads = HEAD_LABELS if head_labels is None else head_labels
    if prediction is None:
        row |= biometry_columns(None, spacing, spec.labels, heads)
    else:
        row |= biometry_columns(prediction.mask, spacing, spec.labels, heads, probabilities=prediction.probabilities)
    row["confidence_fraction"] = round(prediction.confidence(PSEUDO_LABELS.confidence), 6) if prediction else ""
    row["error"] = error
    return row


def _error_text(path: Path, error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text if str(path) in text else f"{path}: {text}"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``predict`` on the ``sscase-monai`` command."""
    parser = subparsers.add_parser(
        "predict",
        help="segment images with a trained model: one mask per image (in the image's format and geometry) and a "
        "predictions.csv",
        description=DESCRIPTION.format(confidence=PSEUDO_LABELS.confidence),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--images", required=True, type=Path, metavar="DIR", help="an image file, or a folder of images (not recursive)"
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the masks (created)")
    parser.add_argument(
        "--probabilities",
        action="store_true",
        help=f"also write each foreground class's probability map to OUT/{PROBABILITIES_DIR}/ (float32 for "
        "NIfTI/NRRD, 8-bit x255 for PNG)",
    )
    add_pixel_size_argument(parser)
    add_head_label_argument(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Segment every image; 0 when all were segmented, 1 when some could not be read."""
    from sscase_monai import io
    from sscase_monai.evaluation import resolve_pixel_spacing, write_records_csv

    images = list_input_images(args.images)
    outputs = plan_outputs(images, args.out)
    predictor = load_predictor(args)
    lookup, _ = pixel_size_lookup(args.pixel_size_csv, args.images)
    spec = predictor.spec
    rows: list[dict[str, Any]] = []
    failures: list[Path] = []
    results = predictor.predict_many(images, args.batch_size, tta=args.tta, skip_errors=True)
    for path, result in zip(images, results, strict=True):
        if isinstance(result, Exception):
            message = _error_text(path, result)
            print(
                f"sscase-monai predict: error: {message} (skipped; continuing with the other images)", file=sys.stderr
            )
            failures.append(path)
            rows.append(prediction_row(path, None, None, spec, None, "", error=message, head_labels=args.head_label))
            continue
        mask_path = io.write_mask(result.mask, result.geometry, outputs[path])
        if args.probabilities:
            write_probabilities(result, spec, mask_path, args.out)
        spacing, source = resolve_pixel_spacing(path, result.geometry, lookup)
        rows.append(prediction_row(path, result, mask_path, spec, spacing, source, head_labels=args.head_label))
    csv_path = write_records_csv(rows, args.out / PREDICTIONS_CSV)
    done = len(images) - len(failures)
    print(f"wrote {done} mask(s) to {args.out}; per-image summary in {csv_path}")
    if failures:
        names = ", ".join(p.name for p in failures[:5]) + (
            f" and {len(failures) - 5} more" if len(failures) > 5 else ""
        )
        print(
            f"sscase-monai predict: {len(failures)} of {len(images)} image(s) could not be segmented: {names}",
            file=sys.stderr,
        )
        return EXIT_PARTIAL
    return 0
