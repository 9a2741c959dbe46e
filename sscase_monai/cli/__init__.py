"""The ``sscase-monai`` command: one sub-command per module in this package."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from sscase_monai import __version__

SUBCOMMANDS: tuple[str, ...] = ("serve", "sample_data", "train", "evaluate", "predict", "export", "simulate_al")
"""Modules of this package that each add one sub-command through ``add_parser(subparsers)``."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, one sub-parser per module in :data:`SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="sscase-monai",
        description="SS_CASE_UNet fetal cerebellum segmentation in 2-D ultrasound: train, evaluate, predict, serve, "
        "export.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sscase-monai`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # the command line, for records of a run
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as e:
        print(f"sscase-monai {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
