"""Resume state of a training run: ``out_dir/checkpoints/last.pt``, rewritten atomically after every epoch.

A checkpoint holds the stage and epoch reached, the network's current weights, the optimizer, LR scheduler,
gradient scaler and early-stopping states, the stage's best weights so far, the finished stages' results, the
history and the random number generators' states. Every value is a tensor or a plain Python value, so it loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sscase_monai.model_files import atomic_write_bytes
from sscase_monai.paths import existing_file

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "sscase-monai-checkpoint/1"
"""Value of a checkpoint's ``"format"`` key."""

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = "last.pt"


def checkpoint_path(out_dir: str | os.PathLike) -> Path:
    """``out_dir/checkpoints/last.pt``."""
    return Path(out_dir) / CHECKPOINT_DIR / CHECKPOINT_FILE


def cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a module's state dict (safe to keep while the module trains on)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) random states as tensors and plain values."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    states: dict[str, Any] = {
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Inverse of :func:`rng_states` (the CUDA states only when this machine has as many GPUs)."""
    python = states["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = states["numpy"]
    np.random.set_state(
        (
            numpy["name"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write a checkpoint atomically (a reader or a killed run never sees half a file)."""
    payload = {"format": CHECKPOINT_FORMAT, **state}
    return atomic_write_bytes(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a readable checkpoint of this format.
    """
    path = existing_file(path, "checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a bad file
        raise ValueError(f"{path}: not a readable training checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: not an sscase-monai training checkpoint (format {found!r})")
    return state
