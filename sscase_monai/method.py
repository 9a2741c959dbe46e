"""The method's numbers (SS_CASE_UNet, ``docs/method.md``) in one typed place.

=====  ====================  =========  ======  ==============  ==========================
stage  what trains           Adam LR    epochs  early stopping  LR on plateau (x0.5)
=====  ====================  =========  ======  ==============  ==========================
1      decoder only          1e-4       20      patience 7      patience 2, min 1e-7
2      all layers            1e-5       50      patience 15     patience 3, min 1e-8
3      all layers + pseudo   5e-6       30      patience 20     patience 5, min 1e-9
=====  ====================  =========  ======  ==============  ==========================

Stage 3 trains on the labelled images plus the unlabelled ones whose stage-2 prediction passes the pseudo-label
filter (:data:`PSEUDO_LABELS`); batch :data:`BATCH_SIZE`, :data:`SAMPLES_PER_IMAGE` augmented draws of each
labelled image per epoch; test-time augmentation averages :data:`TTA_VIEWS`.

The training settings (:class:`sscase_monai.training.TrainingConfig`), the pseudo-label filter, inference's confidence
measure, the command line (defaults and help texts), the MONAI Label app and ``bench/`` read these; change a number
here and all of them follow. Standard library only: the command line's ``--help`` reads it without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

STAGE_NAMES: dict[int, str] = {1: "decoder-only", 2: "full fine-tune", 3: "pseudo-label retrain"}
"""The three stages of the method, by number."""


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


def stage_values(name: str, stages: tuple[StageConfig, ...] = DEFAULT_STAGES) -> str:
    """One :class:`StageConfig` field of every stage as the command line writes it: ``"epochs"`` -> ``"20,50,30"``,
    ``"lr"`` -> ``"1e-4,1e-5,5e-6"``."""
    return ",".join(short_number(getattr(stage, name)) for stage in stages)


def short_number(value: float) -> str:
    """``20`` -> ``"20"``, ``0.95`` -> ``"0.95"``, ``1e-4`` -> ``"1e-4"`` (help texts; parses back to the value)."""
    if value == 0 or abs(value) >= 0.01:
        return f"{value:g}"
    mantissa, exponent = f"{value:.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


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

    def describe(self) -> str:
        """The rule in words, e.g. for help texts: ``"more than 90% of pixels confident (p >= 0.95 or <= 0.05) and
        at least 10 foreground pixels"``."""
        return (
            f"more than {self.min_confident_fraction:.0%} of pixels confident (p >= {self.confidence:g} or "
            f"<= {1 - self.confidence:.2g}) and at least {self.min_foreground_pixels} foreground pixels"
        )


PSEUDO_LABELS = PseudoLabelConfig()
"""The method's pseudo-label filter: :class:`PseudoLabelConfig`'s defaults (:meth:`PseudoLabelConfig.describe`
says it in words)."""

TTA_VIEWS: tuple[str, ...] = ("identity", "hflip", "vflip", "rot90", "rot270")
"""Test-time augmentation: the views whose probabilities are averaged (each inverted back; see
:mod:`sscase_monai.tta`)."""

BATCH_SIZE = 8
"""Images per optimisation step."""

SAMPLES_PER_IMAGE = 32
"""Augmented draws of every labelled training image per epoch."""
