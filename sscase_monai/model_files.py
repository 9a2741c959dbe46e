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
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import BasicUNet, FlexibleUNet
from monai.transforms import Transform
from torch import nn

from sscase_monai.networks import SSCASEUNet
from sscase_monai.paths import existing_file
from sscase_monai.transforms import InputSize, build_preprocess, input_shape, normalize_input_size

logger = logging.getLogger(__name__)

DEFAULT_LABELS: dict[str, int] = {"cerebellum": 1}

ARCHITECTURES: tuple[str, ...] = ("sscase_unet", "basic_unet", "flexible_unet")
"""Networks a model file can hold: SS_CASE_UNet, and two MONAI baselines trained from scratch (``BasicUNet``,
``FlexibleUNet``) that go through the same trainer, predictor and evaluation for comparisons."""

ARCHITECTURE_TITLES: dict[str, str] = {
    "sscase_unet": "SS_CASE_UNet",
    "basic_unet": "MONAI BasicUNet",
    "flexible_unet": "MONAI FlexibleUNet",
}
"""How tables and reports name each architecture."""

BASELINE_BN_MOMENTUM = 0.1
"""Batch-norm momentum of every ``flexible_unet`` batch-norm layer. MONAI's EfficientNet backbone uses TF-style 0.01;
trained from scratch, its running statistics then lag and eval-mode predictions came out empty (measured here)."""

_UMASK = os.umask(0)
os.umask(_UMASK)


def known_field_values(cls: type, values: Mapping[str, Any], what: str, log: logging.Logger = logger) -> dict[str, Any]:
    """The entries of ``values`` named after fields of the dataclass ``cls``; the others (written by newer versions)
    are dropped with a warning.

    Args:
        cls: a dataclass.
        values: settings read back, e.g. from JSON.
        what: the kind of settings, for the warning (``"model"``: "ignoring unknown model settings ...").
        log: the logger to warn on.

    Returns:
        The known entries, in their order in ``values``.
    """
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        log.warning("ignoring unknown %s settings %s", what, unknown)
    return {k: v for k, v in values.items() if k in known}


@dataclass
class ModelSpec:
    """What rebuilds a trained network and the preprocessing it was trained with.

    Attributes:
        encoder: ``"efficientnet-lite0"`` or ``"efficientnet-b0"``.
        in_channels: image channels the network takes (3: gray images are replicated to RGB, as the method does).
        out_channels: 1 for binary segmentation (sigmoid), K + 1 for K foreground classes (softmax).
        input_size: the network input, a side (square, as the method) or ``(height, width)`` (e.g. ``(256, 384)``,
            close to the aspect of 800x540 scans); each a multiple of 32. Images are resized to it and predictions
            back. Stored in its canonical form (:func:`sscase_monai.transforms.normalize_input_size`).
        denoise: whether images get the method's 5x5 median filter before the network.
        labels: label names and their values in masks, e.g. ``{"cerebellum": 1}``.
        dropout: whether the network has its dropout layers (needed for MC-dropout scoring); SS_CASE_UNet only.
        architecture: the network: ``"sscase_unet"`` (SS_CASE_UNet on ``encoder``), or a baseline trained from
            scratch: ``"basic_unet"`` (MONAI ``BasicUNet``, 2-D, its default features; ``encoder`` is not used) or
            ``"flexible_unet"`` (MONAI ``FlexibleUNet`` with ``encoder`` as its backbone, e.g.
            ``"efficientnet-b0"``, batch-norm momentum :data:`BASELINE_BN_MOMENTUM`). Baselines have no encoder to
            freeze, so they train in stages 2 and 3 only. Sidecars written before this field existed load as
            ``"sscase_unet"``.
    """

    encoder: str = "efficientnet-lite0"
    in_channels: int = 3
    out_channels: int = 1
    input_size: InputSize = 256
    denoise: bool = True
    labels: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LABELS))
    dropout: bool = True
    architecture: str = "sscase_unet"

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.architecture == "flexible_unet" and self.encoder not in _flexible_unet_backbones():
            raise ValueError(
                f"a flexible_unet's encoder must be a MONAI FlexibleUNet backbone such as 'efficientnet-b0', "
                f"got {self.encoder!r}"
            )
        self.input_size = normalize_input_size(self.input_size)  # a JSON list back to (height, width)
        if self.out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {self.out_channels!r}")
        expected = 1 if self.out_channels == 1 else self.out_channels - 1
        if len(self.labels) != expected:
            raise ValueError(
                f"{len(self.labels)} label names {self.labels} for out_channels={self.out_channels}; "
                f"expected {expected}"
            )

    @property
    def input_shape(self) -> tuple[int, int]:
        """``(height, width)`` of the network input."""
        return input_shape(self.input_size)

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

    def build_preprocess(self, keys: Sequence[str] = ("image",)) -> list[Transform]:
        """The preprocessing this model was trained with, for ``keys`` (:func:`sscase_monai.transforms.build_preprocess`
        with this spec's input size, channels, classes and denoising).

        Args:
            keys: the item keys to load, e.g. ``("image",)`` or ``("image", "label")``.

        Returns:
            A list of transforms, to extend or pass to ``Compose``.
        """
        return build_preprocess(
            input_size=self.input_size,
            channels=self.in_channels,
            num_classes=self.num_classes,
            denoise=self.denoise,
            keys=keys,
        )

    def build_network(self, pretrained: bool | str | os.PathLike | None = None) -> nn.Module:
        """A new network of this spec, returning logits ``(B, out_channels, H, W)``.

        Args:
            pretrained: SS_CASE_UNet's encoder weights (see ``SSCASEUNet``). Baselines train from scratch: they take
                only ``None``/``False`` (MONAI would download ImageNet weights otherwise).

        Raises:
            ValueError: pretrained weights asked for a baseline.
        """
        if self.architecture == "sscase_unet":
            return SSCASEUNet(
                in_channels=self.in_channels,
                out_channels=self.out_channels,
                encoder=self.encoder,
                pretrained=pretrained,
                dropout=self.dropout,
            )
        if pretrained:
            raise ValueError(f"the {self.architecture} baseline trains from scratch; got pretrained={pretrained!r}")
        if self.architecture == "basic_unet":
            return BasicUNet(spatial_dims=2, in_channels=self.in_channels, out_channels=self.out_channels)
        network = FlexibleUNet(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            backbone=self.encoder,
            pretrained=False,
            spatial_dims=2,
        )
        for module in network.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = BASELINE_BN_MOMENTUM
        return network

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelSpec:
        """Inverse of ``to_dict``; unknown keys (from newer versions) are ignored with a warning."""
        return cls(**known_field_values(cls, values, "model"))


def _flexible_unet_backbones() -> tuple[str, ...]:
    from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

    return tuple(FLEXUNET_BACKBONE.register_dict)


def last_existing_path(paths: Sequence[str | os.PathLike | None]) -> str | None:
    """The last of ``paths`` that exists (``None`` entries skipped), or ``None``: MONAI Label's convention for model
    files listed lowest priority first (a trained model after the starter)."""
    return next((str(p) for p in reversed(paths) if p and os.path.exists(p)), None)


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


def atomic_copy(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy a file so that readers of ``target`` see its old or its complete new content, never a partial file."""
    with open(source, "rb") as f:
        return atomic_write_bytes(target, lambda out: shutil.copyfileobj(f, out))


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
) -> tuple[nn.Module, ModelSpec]:
    """Rebuild a saved network (SS_CASE_UNet or a baseline, as its spec says) in eval mode on ``device``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a state dict of the network its sidecar describes.
    """
    path = existing_file(path, "model file")
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
