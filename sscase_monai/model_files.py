"""Model files: a plain state dict (``model.pt``) with a JSON sidecar (``model.json``) saying how to rebuild it.

The state dict loads with ``torch.load(path, weights_only=True)`` (what MONAI Label and torch >= 2.6 accept); the
sidecar holds the network's and preprocessing's settings, so a file is usable without knowing how it was trained.
Both are written atomically (a temporary file renamed over the target), sidecar first, so a reader never sees a
half-written model, and a model file's change of mtime always comes with its matching sidecar.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from sscase_monai.networks import SSCASEUNet

logger = logging.getLogger(__name__)

DEFAULT_LABELS: dict[str, int] = {"cerebellum": 1}

_UMASK = os.umask(0)
os.umask(_UMASK)


@dataclass
class ModelSpec:
    """What rebuilds a trained network and the preprocessing it was trained with.

    Attributes:
        encoder: ``"efficientnet-lite0"`` or ``"efficientnet-b0"``.
        in_channels: image channels the network takes (3: gray images are replicated to RGB, as the method does).
        out_channels: 1 for binary segmentation (sigmoid), K + 1 for K foreground classes (softmax).
        input_size: side of the square network input (images are resized to it and predictions back).
        denoise: whether images get the method's 5x5 median filter before the network.
        labels: label names and their values in masks, e.g. ``{"cerebellum": 1}``.
        dropout: whether the network has its dropout layers (needed for MC-dropout scoring).
    """

    encoder: str = "efficientnet-lite0"
    in_channels: int = 3
    out_channels: int = 1
    input_size: int = 256
    denoise: bool = True
    labels: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LABELS))
    dropout: bool = True

    def __post_init__(self) -> None:
        if self.input_size <= 0 or self.input_size % 32:
            raise ValueError(f"input_size must be a positive multiple of 32, got {self.input_size!r}")
        if self.out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {self.out_channels!r}")
        expected = 1 if self.out_channels == 1 else self.out_channels - 1
        if len(self.labels) != expected:
            raise ValueError(
                f"{len(self.labels)} label names {self.labels} for out_channels={self.out_channels}; "
                f"expected {expected}"
            )

    @property
    def num_classes(self) -> int:
        """Classes including background (2 for binary)."""
        return max(2, self.out_channels)

    @classmethod
    def for_labels(cls, labels: Mapping[str, int], **kwargs: Any) -> ModelSpec:
        """A spec whose output fits ``labels`` (one sigmoid output for a single label, softmax otherwise)."""
        labels = {str(k): int(v) for k, v in labels.items()}
        values = sorted(labels.values())
        if values != list(range(1, len(values) + 1)):
            raise ValueError(f"label values must be 1..K without gaps, got {labels}")
        out_channels = 1 if len(labels) == 1 else len(labels) + 1
        return cls(labels=labels, out_channels=out_channels, **kwargs)

    def build_network(self, pretrained: bool | str | os.PathLike | None = None) -> SSCASEUNet:
        """A new network of this spec (``pretrained``: encoder weights, see ``SSCASEUNet``)."""
        return SSCASEUNet(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            encoder=self.encoder,
            pretrained=pretrained,
            dropout=self.dropout,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelSpec:
        """Inverse of ``to_dict``; unknown keys (from newer versions) are ignored with a warning."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            logger.warning("ignoring unknown model settings %s", unknown)
        return cls(**{k: v for k, v in values.items() if k in known})


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """``model.pt`` -> ``model.json``."""
    return Path(model_path).with_suffix(".json")


def atomic_write_bytes(path: str | os.PathLike, write: Any) -> Path:
    """Write ``path`` through ``write(file_object)`` into a temporary file beside it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_model(
    path: str | os.PathLike,
    model: torch.nn.Module | Mapping[str, torch.Tensor],
    spec: ModelSpec,
    half: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save a network's weights as a plain state dict plus its sidecar, atomically.

    Args:
        path: the ``.pt`` file.
        model: the network (unwrapped from DDP by the caller or here) or its state dict.
        spec: how to rebuild it.
        half: store floating-point tensors as float16 (half the size; loading casts back to float32).
        extra: more JSON-able facts for the sidecar (e.g. training metrics, the command that made it).

    Returns:
        ``path``.
    """
    module = getattr(model, "module", model)
    state = module.state_dict() if isinstance(module, torch.nn.Module) else dict(module)
    state = {
        k: (v.detach().to("cpu", torch.float16) if half and v.is_floating_point() else v.detach().cpu())
        for k, v in state.items()
    }
    sidecar = {"format": "sscase-monai/1", "spec": spec.to_dict(), "half": half, **(dict(extra) if extra else {})}
    atomic_write_bytes(sidecar_path(path), lambda f: f.write(json.dumps(sidecar, indent=2).encode()))
    return atomic_write_bytes(path, lambda f: torch.save(state, f))


def read_spec(path: str | os.PathLike) -> ModelSpec:
    """The spec in a model's sidecar; the defaults, with a warning, when there is no sidecar."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        logger.warning("%s has no sidecar %s: assuming the default model settings", path, sidecar.name)
        return ModelSpec()
    try:
        return ModelSpec.from_dict(json.loads(sidecar.read_text())["spec"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{sidecar}: not a valid sscase-monai model sidecar ({e})") from e


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The whole sidecar of a model file (empty when there is none)."""
    sidecar = sidecar_path(path)
    return json.loads(sidecar.read_text()) if sidecar.is_file() else {}


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", spec: ModelSpec | None = None
) -> tuple[SSCASEUNet, ModelSpec]:
    """Rebuild a saved network in eval mode on ``device``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a state dict of the network its sidecar describes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found")
    spec = spec or read_spec(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a bad file
        raise ValueError(f"{path}: not a readable state dict ({type(e).__name__}: {e})") from e
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    network = spec.build_network()
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit the network {spec}: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    bad_shapes = [k for k, v in state.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if bad_shapes:
        k = bad_shapes[0]
        raise ValueError(
            f"{path} does not fit the network {spec}: {k} has shape {tuple(state[k].shape)}, "
            f"expected {tuple(expected[k].shape)}"
        )
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    network.load_state_dict(state, strict=True)
    return network.to(device).eval(), spec
