"""``sscase-monai export``: a trained model as ONNX, TorchScript or a MONAI bundle, checked against PyTorch.

The export itself is :mod:`sscase_monai.export` (graphs) and :mod:`sscase_monai.bundle` (bundle folder). Heavy
imports happen when the command runs, so ``sscase-monai --help`` stays quick.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

EXIT_CHECK_FAILED = 1
"""Exit status when the file was written but does not reproduce PyTorch's predictions."""

DESCRIPTION = """\
Write a trained model (model.pt + its model.json sidecar) in a format that runs without this server:

  onnx         OUT is a .onnx file: input "image" (N, C, S, S) float32 in [0, 1], dynamic batch N; output
               "probabilities" (N, K, S, S): binary models K = 1 (sigmoid, mask = p > 0.5), K classes K + 1
               softmax channels (mask = argmax = label value). ONNX opset 18 unless --opset. The model's labels,
               input size and preprocessing are in the file's metadata_props ("sscase_monai", JSON).
  torchscript  OUT is a TorchScript file (.pt or .ts), traced and frozen: same input and output as onnx;
               torch.jit.load(OUT) runs it; the metadata is the archive's extra file "sscase_monai.json".
  bundle       OUT is a MONAI bundle folder: configs/metadata.json (MONAI's bundle metadata: input/output spec,
               label names), configs/inference.json, models/model.pt. Run it on a folder of images with
                 python -m monai.bundle run --config_file OUT/configs/inference.json \\
                     --meta_file OUT/configs/metadata.json --bundle_root OUT --dataset_dir SCANS --output_dir MASKS
               (needs sscase-monai installed: the bundle uses its preprocessing and network).

The graphs take images after the model's preprocessing (sscase_monai.transforms.build_preprocess: scale to
[0, 1], gray to RGB, resize to S x S, 5x5 median unless the model was trained without it); resize the
probabilities back to the image's size before thresholding, as sscase-monai predict does.

After writing, the export is checked against the PyTorch model on the same preprocessed images (--check-images
DIR, else the first four bundled sample scans in sample-data/): the largest probability difference and the Dice
between the two masks are printed; the check fails when Dice < 0.999 or a probability differs by more than 0.01.

Exit status: 0 when written and checked; 1 when written but the check failed; 2 for a bad argument or model.

Examples:
  sscase-monai export --model runs/hc18/model.pt --format onnx --out model.onnx --check-images hc18/val/images
  sscase-monai export --model runs/psfhs/model.pt --format bundle --out bundles/psfhs
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``export`` on the ``sscase-monai`` command."""
    from sscase_monai.cli.predict import positive_int

    parser = subparsers.add_parser(
        "export",
        help="write a trained model as ONNX, TorchScript or a MONAI bundle (checked against PyTorch)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, type=Path, metavar="CKPT", help="trained model file (model.pt)")
    parser.add_argument("--format", required=True, choices=("onnx", "torchscript", "bundle"), help="what to write")
    parser.add_argument(
        "--out", required=True, type=Path, metavar="PATH", help="the .onnx / TorchScript file, or the bundle folder"
    )
    parser.add_argument("--opset", type=positive_int, default=None, metavar="N", help="ONNX opset (default: 18)")
    parser.add_argument(
        "--check-images",
        type=Path,
        metavar="DIR",
        help="check the export on these images (a folder or one file; default: the first four bundled sample scans)",
    )
    parser.add_argument("--max-check-images", type=positive_int, default=16, metavar="N", help="at most N (16)")
    parser.add_argument("--no-check", action="store_true", help="write only, do not compare with PyTorch")
    parser.set_defaults(func=run)
    return parser


def _out_path(args: argparse.Namespace) -> Path:
    out = args.out
    if args.format == "bundle":
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out}: a bundle is a folder, and this is a file")
        return out
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the {args.format} file to write (e.g. {out / 'model.onnx'})")
    if args.format == "onnx" and out.suffix.lower() != ".onnx":
        raise ValueError(f"--out {out}: an ONNX file should end in .onnx")
    if args.format == "torchscript" and out.suffix.lower() == ".onnx":
        raise ValueError(f"--out {out}: a TorchScript file should end in .pt or .ts, not .onnx")
    return out


def run(args: argparse.Namespace) -> int:
    """Export, then check; 0 when the check passed (or was skipped), 1 when it failed."""
    from sscase_monai import export
    from sscase_monai.bundle import bundle_network, write_bundle
    from sscase_monai.cli.predict import list_input_images
    from sscase_monai.paths import existing_file

    existing_file(args.model, "model file")
    if args.opset is not None and args.format != "onnx":
        raise ValueError("--opset applies to --format onnx only")
    out = _out_path(args)
    images = list_input_images(args.check_images)[: args.max_check_images] if args.check_images else None
    if args.format == "onnx":
        written = export.export_onnx(args.model, out, opset=args.opset or export.ONNX_OPSET)
    elif args.format == "torchscript":
        written = export.export_torchscript(args.model, out)
    else:
        written = write_bundle(args.model, out)
    files = [p for p in written.rglob("*") if p.is_file()] if written.is_dir() else [written]
    size = sum(p.stat().st_size for p in files)
    print(f"wrote {args.format}: {written} ({size / 1e6:.1f} MB)")
    if args.no_check:
        return 0
    if args.format == "bundle":
        exported = export.ProbabilityNetwork(bundle_network(written)).eval()
    else:
        exported = export.load_exported(written)
    source = str(args.check_images) if images is not None else None
    check = export.check_export(args.model, exported, images, source=source)
    print(f"check against PyTorch: {check.summary()}")
    if not check.passed():
        print(
            f"sscase-monai export: error: the {args.format} export does not reproduce PyTorch (needs mask Dice >= "
            f"{export.CHECK_DICE} and probability differences <= {export.CHECK_MAX_ABS_DIFF})",
            file=sys.stderr,
        )
        return EXIT_CHECK_FAILED
    return 0
