"""Default training schedules by device, and how long a run should take on a CPU.

On a GPU the default is the method's schedule (:data:`sscase_monai.method.DEFAULT_STAGES`, 32 augmented
samples per image). On a CPU that schedule takes hours: at the ~5.5 training images/s measured at 256x256 on 2
cores (``bench/RESULTS.md``, "Training throughput"), 100 epochs of 6 images x 32 samples is an hour for the 8
bundled labels. A CPU run defaults to :data:`CPU_SCHEDULE` instead: a few minutes for the bundled labels, about a
quarter of an hour for 50. Its learning rates are those of the project's short CPU benchmark schedules (the HC18
model of ``bench/RESULTS.md``: 1e-3 then 1e-4), since the method's rates (1e-4, 1e-5, 5e-6) barely move a model in
a dozen epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sscase_monai.method import DEFAULT_STAGES, SAMPLES_PER_IMAGE
from sscase_monai.training.config import TrainingConfig


@dataclass(frozen=True)
class Schedule:
    """Epochs and learning rates of stages 1, 2, 3 and augmented samples per image and epoch."""

    epochs: tuple[int, int, int]
    lr: tuple[float, float, float]
    samples_per_image: int


METHOD_SCHEDULE = Schedule(
    epochs=tuple(s.epochs for s in DEFAULT_STAGES),
    lr=tuple(s.lr for s in DEFAULT_STAGES),
    samples_per_image=SAMPLES_PER_IMAGE,
)
"""The method's schedule (20/50/30 epochs, 32 samples per image): the default on a GPU."""

CPU_SCHEDULE = Schedule(epochs=(3, 6, 3), lr=(1e-3, 1e-4, 5e-5), samples_per_image=8)
"""The default without a GPU: 12 epochs of 8 samples per image."""

CPU_IMAGES_PER_SECOND_256 = 5.5
"""Training images per second at 256x256 on 2 CPU cores, full fine-tune (``bench/RESULTS.md``, "Training
throughput"); the estimate scales it by the input area."""


def uses_cuda(device: str) -> bool:
    """Whether a ``device`` setting (``auto``, ``cpu``, ``cuda``, ``cuda:N``) trains on a GPU on this machine."""
    return str(device).startswith("cuda") or (str(device) == "auto" and torch.cuda.is_available())


def default_schedule(device: str = "auto") -> Schedule:
    """:data:`METHOD_SCHEDULE` when ``device`` trains on a GPU, else :data:`CPU_SCHEDULE`."""
    return METHOD_SCHEDULE if uses_cuda(device) else CPU_SCHEDULE


def expected_cpu_seconds(config: TrainingConfig, num_train: int, num_val: int, num_unlabelled: int = 0) -> float:
    """Rough duration of a CPU run of ``config``: training samples at :data:`CPU_IMAGES_PER_SECOND_256` (scaled to the
    input size), validation and pseudo-labelling at about three times that speed (forward passes only)."""
    height, width = config.spec.input_shape
    speed = CPU_IMAGES_PER_SECOND_256 * 256.0**2 / (height * width)
    samples = config.planned_epochs * num_train * config.samples_per_image
    forward = config.planned_epochs * num_val + (num_unlabelled if 3 in config.run_stages else 0)
    return samples / speed + forward / (3.0 * speed)


def format_duration(seconds: float) -> str:
    """``754`` -> ``"13 min"``; under a minute -> ``"1 min"``; hours as ``"2 h 05 min"``."""
    minutes = max(1, math.ceil(seconds / 60.0))
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
