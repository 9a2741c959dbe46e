"""``sscase-monai sample-data``: write a studies folder of synthetic trans-cerebellar ultrasound images."""

from __future__ import annotations

import argparse
import re

from sscase_monai.sample_data import DEFAULT_SIZE, METADATA_FILE, sample_dataset_command, write_sample_dataset

DESCRIPTION = """\
Write simulated 2-D fetal ultrasound images of the trans-cerebellar plane (curvilinear probe sector, skull with
acoustic shadowing, two-lobed cerebellum, cisterna magna, speckle) as a MONAI Label studies folder:

  OUT/case_NNN.nii.gz          images: W x H x 1 uint8 NIfTI with the pixel spacing (as 3D Slicer sends a 2-D scan)
  OUT/case_NNN.png             --png of the images as 8-bit PNG instead (no spacing)
  OUT/labels/final/case_NNN.*  cerebellum labels (1 = cerebellum, 0 = background) for --labelled-fraction of them,
                               on exactly the image's grid, in the image's format
  OUT/metadata.csv             per image: file, label, labelled, size, pixel_spacing_mm, tcd_mm (ground-truth
                               transverse cerebellar diameter), gestational_age_weeks, sample_seed
  OUT/README.md                what the folder is, the command that made it, the licence (CC0)

The same arguments give byte-identical files. The repository's sample-data/ folder is, from the repository root:

  {command}
"""


def parse_size(text: str) -> tuple[int, int]:
    """``"416x320"`` -> ``(416, 320)``: width by height in pixels."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels such as 416x320, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``sample-data`` on the ``sscase-monai`` command."""
    default_command = sample_dataset_command("sample-data", 16, 0, 0.5, 2, DEFAULT_SIZE)
    parser = subparsers.add_parser(
        "sample-data",
        help="write synthetic trans-cerebellar ultrasound images and cerebellum labels (a MONAI Label studies folder)",
        description=DESCRIPTION.format(command=default_command),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out",
        default="sample-data",
        metavar="DIR",
        help="folder to write (created if missing; must be empty unless --force); default: ./sample-data in the "
        "current directory",
    )
    parser.add_argument("--n", type=int, default=16, metavar="N", help="number of images (default: 16)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed of the whole set (default: 0)")
    parser.add_argument(
        "--labelled-fraction",
        type=float,
        default=0.5,
        metavar="F",
        help="share of the images that get a final label, 0-1, rounded to whole images (default: 0.5)",
    )
    parser.add_argument(
        "--png",
        type=int,
        default=2,
        metavar="K",
        help="how many images (and their labels) are written as 8-bit PNG instead of NIfTI; spread over labelled "
        "and unlabelled images (default: 2)",
    )
    parser.add_argument(
        "--size",
        type=parse_size,
        default=DEFAULT_SIZE,
        metavar="WxH",
        help=f"image size in pixels (default: {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}); the pixel spacing is chosen per "
        "image so the head fills most of the field of view",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty folder, first deleting what an earlier run wrote there (case_* images and "
        "labels, metadata.csv, README.md); other files are kept",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Write the folder and say what was written."""
    rows = write_sample_dataset(
        args.out,
        n=args.n,
        seed=args.seed,
        labelled_fraction=args.labelled_fraction,
        png=args.png,
        size=args.size,
        force=args.force,
    )
    n_labelled = sum(row["labelled"] == "yes" for row in rows)
    n_png = sum(row["file"].endswith(".png") for row in rows)
    print(
        f"wrote {len(rows)} images ({n_labelled} labelled, {len(rows) - n_labelled} unlabelled, {n_png} PNG) "
        f"to {args.out}; see {args.out}/{METADATA_FILE}"
    )
    return 0
