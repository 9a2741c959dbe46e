"""Settings of a three-stage training run; the method's numbers come from :mod:`sscase_monai.method`.

Everything is a plain dataclass that round-trips through :meth:`TrainingConfig.to_dict` /
:meth:`TrainingConfig.from_dict` (JSON-able: it is stored in checkpoints and model sidecars).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sscase_monai.method import (
    BATCH_SIZE,
    DEFAULT_STAGES,
    PSEUDO_LABELS,
    SAMPLES_PER_IMAGE,
    STAGE_NAMES,
    PseudoLabelConfig,
    StageConfig,
)
from sscase_monai.model_files import ModelSpec, known_field_values

logger = logging.getLogger(__name__)

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
"""Accepted ``device`` values (``"cuda:N"`` too)."""


def _check_device(device: str) -> None:
    text = str(device)
    if text not in DEVICES and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise ValueError(f"device must be one of {DEVICES} or 'cuda:N', got {device!r}")


@dataclass(frozen=True)
class TrainingConfig:
    """Everything a training run needs besides its data and output folder.

    Attributes:
        spec: the network and preprocessing to train (encoder, labels, ``input_size``, denoise); saved with the model.
        pretrained: encoder initialisation when no ``init_weights`` are given: ``True`` (ImageNet; lite0 loads
            offline), ``False``/``None`` (random), or a path to an encoder state dict.
        init_weights: a model file (``model.pt`` with sidecar) to start from instead; e.g. ``run_stages=(3,)``
            after an earlier run's stage 2.
        stages: the schedules of stages 1, 2 and 3 (always three; see :data:`DEFAULT_STAGES`).
        run_stages: which stages to run, ascending, e.g. ``(1, 2)`` or ``(3,)``.
        batch_size: images per optimisation step (per process under DDP).
        samples_per_image: augmented draws of every training image per epoch.
        num_workers: DataLoader worker processes for augmentation (0: in the main process).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; under ``torchrun`` each
            process uses ``cuda:LOCAL_RANK``.
        amp: mixed precision on CUDA (bfloat16 autocast where supported, else float16 with a gradient scaler).
        channels_last: run the network in channels-last memory format; ``None``: on CPU only (measured 1.3-1.5x
            faster training on CPU at 256x256; not measured on GPU yet).
        deterministic: ask for deterministic CUDA algorithms (slower; CPU runs are deterministic anyway).
        seed: seed of everything random (initialisation, augmentation, sampling, dropout).
        consistency_weight: weight of the MSE consistency term between two flipped views of unlabelled images
            (0 = off, the notebook's recipe).
        pseudo_labels: stage 3's selection rule (default: the method's, :data:`sscase_monai.method.PSEUDO_LABELS`).
        cutout_prob: probability of occluding a training image with blank rectangles, the label kept (0 = off, the
            method's augmentation only; :func:`sscase_monai.transforms.build_train_augment`).
        val_batch_size: images per validation forward pass (default: ``batch_size``).
        progress: show a tqdm bar per epoch (only on a terminal, only in the main process).
        tensorboard: write TensorBoard event files to ``out_dir/tensorboard``.
        resume: continue from ``out_dir/checkpoints/last.pt`` when it exists.
    """

    spec: ModelSpec = field(default_factory=ModelSpec)
    pretrained: bool | str | None = True
    init_weights: str | None = None
    stages: tuple[StageConfig, ...] = DEFAULT_STAGES
    run_stages: tuple[int, ...] = (1, 2, 3)
    batch_size: int = BATCH_SIZE
    samples_per_image: int = SAMPLES_PER_IMAGE
    num_workers: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool | None = None
    deterministic: bool = False
    seed: int = 0
    consistency_weight: float = 0.0
    pseudo_labels: PseudoLabelConfig = PSEUDO_LABELS
    cutout_prob: float = 0.0
    val_batch_size: int | None = None
    progress: bool = True
    tensorboard: bool = True
    resume: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.pretrained, os.PathLike):
            object.__setattr__(self, "pretrained", os.fspath(self.pretrained))
        if isinstance(self.init_weights, os.PathLike):
            object.__setattr__(self, "init_weights", os.fspath(self.init_weights))
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "run_stages", tuple(int(s) for s in self.run_stages))
        if len(self.stages) != 3 or not all(isinstance(s, StageConfig) for s in self.stages):
            raise ValueError(f"stages must be three StageConfig (stages 1, 2, 3), got {self.stages!r}")
        if not self.run_stages or any(s not in STAGE_NAMES for s in self.run_stages):
            raise ValueError(f"run_stages must be a non-empty subset of (1, 2, 3), got {self.run_stages!r}")
        if list(self.run_stages) != sorted(set(self.run_stages)):
            raise ValueError(f"run_stages must be ascending without repeats, got {self.run_stages!r}")
        for name in ("batch_size", "samples_per_image"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.val_batch_size is not None and (
            int(self.val_batch_size) != self.val_batch_size or self.val_batch_size < 1
        ):
            raise ValueError(f"val_batch_size must be a whole number >= 1 or None, got {self.val_batch_size!r}")
        if int(self.num_workers) != self.num_workers or self.num_workers < 0:
            raise ValueError(f"num_workers must be a whole number >= 0, got {self.num_workers!r}")
        if self.consistency_weight < 0:
            raise ValueError(f"consistency_weight must be >= 0, got {self.consistency_weight!r}")
        if not 0.0 <= self.cutout_prob <= 1.0:
            raise ValueError(f"cutout_prob must be within [0, 1], got {self.cutout_prob!r}")
        _check_device(self.device)

    def stage(self, number: int) -> StageConfig:
        """The schedule of stage ``number`` (1, 2 or 3)."""
        if number not in STAGE_NAMES:
            raise ValueError(f"stage must be 1, 2 or 3, got {number!r}")
        return self.stages[number - 1]

    @property
    def planned_epochs(self) -> int:
        """Sum of the epochs of the stages to run (early stopping may need fewer)."""
        return sum(self.stage(s).epochs for s in self.run_stages)

    def with_stage_settings(
        self,
        epochs: Sequence[int] | None = None,
        lr: Sequence[float] | None = None,
        patience: Sequence[int] | None = None,
    ) -> TrainingConfig:
        """A copy with per-stage epochs, learning rates or early-stopping patience replaced.

        Each argument is one value for every stage, three values (stages 1, 2, 3), or one value per stage in
        :attr:`run_stages` (e.g. ``run_stages=(1, 2)``, ``epochs=(10, 20)``); ``None`` keeps the current ones.

        Raises:
            ValueError: another number of values, or a value out of range.
        """
        stages = list(self.stages)
        for name, values in (("epochs", epochs), ("lr", lr), ("patience", patience)):
            if values is None:
                continue
            values = list(values)
            if len(values) == 1:
                targets = [1, 2, 3]
                values *= 3
            elif len(values) == 3:
                targets = [1, 2, 3]
            elif len(values) == len(self.run_stages):
                targets = list(self.run_stages)
            else:
                raise ValueError(
                    f"{name} needs 1 value, 3 (stages 1, 2, 3) or one per stage run {self.run_stages}, got {values!r}"
                )
            for stage, value in zip(targets, values, strict=True):
                stages[stage - 1] = replace(stages[stage - 1], **{name: value})
        return replace(self, stages=tuple(stages))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (the spec and stages as dicts)."""
        values = asdict(self)
        values["stages"] = [asdict(s) for s in self.stages]
        values["run_stages"] = list(self.run_stages)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainingConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored with a warning."""
        kwargs = known_field_values(cls, values, "training", logger)
        if isinstance(kwargs.get("spec"), Mapping):
            kwargs["spec"] = ModelSpec.from_dict(kwargs["spec"])
        if "stages" in kwargs:
            kwargs["stages"] = tuple(s if isinstance(s, StageConfig) else StageConfig(**s) for s in kwargs["stages"])
        if isinstance(kwargs.get("pseudo_labels"), Mapping):
            kwargs["pseudo_labels"] = PseudoLabelConfig(**kwargs["pseudo_labels"])
        return cls(**kwargs)
