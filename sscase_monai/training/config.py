"""Settings of a three-stage training run, with the method's defaults (``SEED-METHOD.md``, "Three-stage ...").

=====  ====================  =========  ======  ==============  ==========================
stage  what trains           Adam LR    epochs  early stopping  LR on plateau (x0.5)
=====  ====================  =========  ======  ==============  ==========================
1      decoder only          1e-4       20      patience 7      patience 2, min 1e-7
2      all layers            1e-5       50      patience 15     patience 3, min 1e-8
3      all layers + pseudo   5e-6       30      patience 20     patience 5, min 1e-9
=====  ====================  =========  ======  ==============  ==========================

Everything is a plain dataclass that round-trips through :meth:`TrainingConfig.to_dict` /
:meth:`TrainingConfig.from_dict` (JSON-able: it is stored in checkpoints and model sidecars).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from sscase_monai.model_files import ModelSpec

logger = logging.getLogger(__name__)

STAGE_NAMES: dict[int, str] = {1: "decoder-only", 2: "full fine-tune", 3: "pseudo-label retrain"}
"""The three stages of the method, by number."""

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
"""Accepted ``device`` values (``"cuda:N"`` too)."""


@dataclass(frozen=True)
class StageConfig:
    """One stage's optimisation schedule.

    Attributes:
        epochs: most epochs to train (early stopping may end the stage sooner); 0 skips the stage's training.
        lr: Adam learning rate.
        patience: early stopping: epochs without a lower validation loss before the stage ends (its best weights
            are then restored).
        lr_patience: ``ReduceLROnPlateau`` patience (epochs without improvement before the LR is multiplied by
            ``lr_factor``).
        min_lr: the LR never goes below this.
        lr_factor: LR multiplier on a plateau.
    """

    epochs: int
    lr: float
    patience: int
    lr_patience: int
    min_lr: float
    lr_factor: float = 0.5

    def __post_init__(self) -> None:
        if int(self.epochs) != self.epochs or self.epochs < 0:
            raise ValueError(f"epochs must be a whole number >= 0, got {self.epochs!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if int(self.patience) != self.patience or self.patience < 0:
            raise ValueError(f"patience must be a whole number >= 0, got {self.patience!r}")
        if int(self.lr_patience) != self.lr_patience or self.lr_patience < 0:
            raise ValueError(f"lr_patience must be a whole number >= 0, got {self.lr_patience!r}")
        if self.min_lr < 0:
            raise ValueError(f"min_lr must be >= 0, got {self.min_lr!r}")
        if not 0.0 < self.lr_factor < 1.0:
            raise ValueError(f"lr_factor must be in (0, 1), got {self.lr_factor!r}")


DEFAULT_STAGES: tuple[StageConfig, StageConfig, StageConfig] = (
    StageConfig(epochs=20, lr=1e-4, patience=7, lr_patience=2, min_lr=1e-7),
    StageConfig(epochs=50, lr=1e-5, patience=15, lr_patience=3, min_lr=1e-8),
    StageConfig(epochs=30, lr=5e-6, patience=20, lr_patience=5, min_lr=1e-9),
)
"""The method's schedules of stages 1, 2 and 3."""


@dataclass(frozen=True)
class PseudoLabelConfig:
    """Stage 3's choice of unlabelled images (see ``pseudo_label_selection.select_confident_pseudo_labels``).

    Attributes:
        threshold: binary foreground where ``p > threshold``.
        confidence: a pixel is confident when ``p >= confidence`` or ``p <= 1 - confidence``.
        min_confident_fraction: keep an image when MORE than this share of its pixels is confident.
        min_foreground_pixels: ... and its pseudo-label has at least this many foreground pixels.
        tta: predict the unlabelled images with test-time augmentation.
    """

    threshold: float = 0.5
    confidence: float = 0.95
    min_confident_fraction: float = 0.9
    min_foreground_pixels: int = 10
    tta: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"pseudo-label threshold must be in (0, 1), got {self.threshold!r}")
        if not 0.5 <= self.confidence <= 1.0:
            raise ValueError(f"pseudo-label confidence must be in [0.5, 1], got {self.confidence!r}")
        if not 0.0 <= self.min_confident_fraction <= 1.0:
            raise ValueError(
                f"pseudo-label min_confident_fraction must be in [0, 1], got {self.min_confident_fraction!r}"
            )
        if int(self.min_foreground_pixels) != self.min_foreground_pixels or self.min_foreground_pixels < 0:
            raise ValueError(
                f"pseudo-label min_foreground_pixels must be a whole number >= 0, got {self.min_foreground_pixels!r}"
            )


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
        samples_per_image: augmented draws of every training image per epoch (the method: 32).
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
        pseudo_labels: stage 3's selection rule.
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
    batch_size: int = 8
    samples_per_image: int = 32
    num_workers: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool | None = None
    deterministic: bool = False
    seed: int = 0
    consistency_weight: float = 0.0
    pseudo_labels: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
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
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            logger.warning("ignoring unknown training settings %s", unknown)
        kwargs = {k: v for k, v in values.items() if k in known}
        if isinstance(kwargs.get("spec"), Mapping):
            kwargs["spec"] = ModelSpec.from_dict(kwargs["spec"])
        if "stages" in kwargs:
            kwargs["stages"] = tuple(s if isinstance(s, StageConfig) else StageConfig(**s) for s in kwargs["stages"])
        if isinstance(kwargs.get("pseudo_labels"), Mapping):
            kwargs["pseudo_labels"] = PseudoLabelConfig(**kwargs["pseudo_labels"])
        return cls(**kwargs)
