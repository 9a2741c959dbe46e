"""A stage's schedule on the validation loss, as the method's Keras callbacks behave.

- :class:`EarlyStopping`: Keras' ``EarlyStopping(monitor="val_loss", restore_best_weights=True)``: when a stage ends
  and which epoch's weights are its result.
- :func:`plateau_scheduler`: PyTorch's ``ReduceLROnPlateau`` set up to act like Keras' (same epoch of reduction).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from sscase_monai.method import StageConfig

logger = logging.getLogger(__name__)


class EarlyStopping:
    """Track the lowest validation loss; ask to stop after ``patience`` epochs without a new lowest one.

    An epoch improves when its loss is finite and lower than the best so far by more than ``min_delta``. After
    ``patience`` consecutive epochs without improvement :attr:`should_stop` becomes True (``patience=0`` stops after
    the first epoch that does not improve). The caller keeps the best epoch's weights when :meth:`step` returns
    True and restores them at the end of the stage.

    Args:
        patience: epochs without improvement tolerated.
        min_delta: smallest decrease that counts as an improvement.
    """

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience!r}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta!r}")
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.best = math.inf
        self.best_epoch = 0
        self.wait = 0
        self.should_stop = False

    def step(self, value: float, epoch: int) -> bool:
        """Record epoch ``epoch``'s validation loss; True when it is the new best."""
        value = float(value)
        if math.isfinite(value) and value < self.best - self.min_delta:
            self.best, self.best_epoch, self.wait = value, int(epoch), 0
            return True
        self.wait += 1
        if self.wait >= self.patience:
            self.should_stop = True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "patience": self.patience,
            "min_delta": self.min_delta,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "should_stop": self.should_stop,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved state; the patience of this object (maybe changed for the resumed run) is kept."""
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.wait = int(state["wait"])
        self.should_stop = self.wait > 0 and self.wait >= self.patience


def plateau_scheduler(optimizer: torch.optim.Optimizer, settings: StageConfig) -> ReduceLROnPlateau:
    """Multiply the LR by ``settings.lr_factor`` after ``settings.lr_patience`` epochs without a lower val loss.

    Keras reduces when its count of epochs without improvement reaches ``patience``; PyTorch when the count exceeds
    it, so PyTorch's patience here is one less. An improvement is a decrease of more than 1e-4 (Keras' default
    ``min_delta``, absolute). The LR never goes below ``settings.min_lr``.
    """
    return ReduceLROnPlateau(
        optimizer,
        mode="min",
        factor=settings.lr_factor,
        patience=max(settings.lr_patience - 1, 0),
        threshold=1e-4,
        threshold_mode="abs",
        min_lr=settings.min_lr,
    )
