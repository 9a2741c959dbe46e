"""Active-learning selection time (issue #22): how long each strategy takes to pick from a pool of 500 and 5,000 scans.

Times :func:`sscase_monai.active_learning.select_batch` (what ``simulate-al`` picks with; the app's background
scoring runs the same score and feature functions over every unlabelled image) for every strategy of the registry,
picking 8 images with 48 labelled ones as the coverage centers: the end of the simulated loop. With one torch thread,
the process's CPU time is what the pick takes on an idle core (the wall time is recorded too, but on a shared machine
it depends on the other jobs). The pool is HC18 scans
(``unlabeled``, then ``train`` and ``val`` after the 48 labelled ``train`` images); the 5,000-scan pool repeats them
under distinct names (symbolic links in a temporary folder), since scoring time does not depend on which scan it is.

Rows are appended to ``bench/al_selection_time.csv`` (``--csv``; a rerun skips what is measured). The table is
written into the section "Active learning at the real operating point (issue #22)" by ``bench/al_simulation.py``.

Example (from the repository root)::

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python bench/al_selection_time.py \\
        --model bench/out/al128/seed0/round0/model.pt --sizes 500,5000
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from common import SHARED_DATA, load_average, machine, setup_logging  # noqa: E402

from sscase_monai.active_learning import STRATEGIES, select_batch  # noqa: E402
from sscase_monai.cli.train import int_list  # noqa: E402
from sscase_monai.inference import Predictor  # noqa: E402
from sscase_monai.transforms import format_input_size  # noqa: E402

logger = logging.getLogger("al_selection_time")

SELECTION_CSV = REPO_ROOT / "bench" / "al_selection_time.csv"
"""The measured rows, kept in the repository (small) so the report can be rewritten without measuring again."""
COLUMNS = (
    "model",
    "input_size",
    "strategy",
    "pool",
    "labelled",
    "picked",
    "seconds",
    "cpu_seconds",
    "ms_per_image",
    "load_average",
    "cpu",
    "torch",
)
LABELLED = 48
PICKED = 8


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the model file to pick with")
    parser.add_argument(
        "--data", type=Path, default=SHARED_DATA / "hc18", help="HC18 folder (train/, unlabeled/, val/)"
    )
    parser.add_argument("--sizes", type=int_list, default=(500, 5000), help="pool sizes (500,5000)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="strategies to time (all)")
    parser.add_argument("--csv", type=Path, default=SELECTION_CSV, help="CSV to append rows to")
    return parser.parse_args(argv)


def scans(data: Path) -> tuple[list[str], list[str]]:
    """The 48 labelled scans and the rest, in a fixed order."""
    train = sorted(str(p) for p in (data / "train" / "images").iterdir())
    rest = sorted(str(p) for p in (data / "unlabeled" / "images").iterdir())
    rest += train[LABELLED:] + sorted(str(p) for p in (data / "val" / "images").iterdir())
    return train[:LABELLED], rest


def pool_of(size: int, scans_: Sequence[str], folder: Path) -> list[str]:
    """``size`` distinct paths: the scans themselves, then links to them under new names."""
    if size <= len(scans_):
        return list(scans_[:size])
    pool = []
    for index in range(size):
        source = Path(scans_[index % len(scans_)])
        link = folder / f"{index:05d}_{source.name}"
        if not link.exists():
            link.symlink_to(source)
        pool.append(str(link))
    return pool


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    torch.set_num_threads(1)
    predictor = Predictor.from_file(args.model, device="cpu")
    size_text = format_input_size(predictor.spec.input_size)  # e.g. 256x256: al_simulation.py parses it back
    labelled, rest = scans(args.data)
    done = {(r["model"], r["strategy"], r["pool"]) for r in read_rows(args.csv)}
    host = machine()
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="al_pool_") as folder:
        for size in args.sizes:
            pool = pool_of(size, rest, Path(folder))
            for strategy in args.strategies.split(","):
                if (str(args.model), strategy, str(size)) in done:
                    logger.info("%s on %d scans: measured before", strategy, size)
                    continue
                load = load_average()
                start, cpu_start = time.perf_counter(), time.process_time()
                picked = select_batch(strategy, predictor, pool, labelled, PICKED, seed=0)
                seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
                row = {
                    "model": str(args.model),
                    "input_size": size_text,
                    "strategy": strategy,
                    "pool": size,
                    "labelled": len(labelled),
                    "picked": len(picked),
                    "seconds": round(seconds, 2),
                    "cpu_seconds": round(cpu_seconds, 2),
                    "ms_per_image": round(1000 * cpu_seconds / size, 2),
                    "load_average": round(load, 1),
                    "cpu": host["cpu"],
                    "torch": host["torch"],
                }
                logger.info(
                    "%s on %d scans at %s px: %.1f s (%.1f s CPU)", strategy, size, size_text, seconds, cpu_seconds
                )
                new = not args.csv.is_file()
                with open(args.csv, "a", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=COLUMNS)
                    if new:
                        writer.writeheader()
                    writer.writerow(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
