"""SS_CASE_UNet: an attention U-Net on an EfficientNet encoder (Vatanparast, Fateh, Mashayekhi, 2025).

Encoder (MONAI EfficientNet, see ``encoders``) -> squeeze-and-excitation on four skips, coordinate attention on the
bottleneck -> four up blocks (128/64/32/16 filters) -> full-resolution head (8 filters) -> 1x1 conv logits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence

import torch
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers.factories import Act, Conv
from torch import nn

from sscase_monai.networks.blocks import CoordinateAttention, SqueezeExcitation
from sscase_monai.networks.encoders import EfficientNetSkipEncoder

__all__ = ["SSCASEDecoder", "SSCASEUNet", "SegmentationHead", "UpBlock", "enable_mc_dropout"]

logger = logging.getLogger(__name__)

INPUT_MULTIPLE = 32
"""Input sides must be multiples of the encoder's total stride."""


def _upsample_x2() -> UpSample:
    # Keras UpSampling2D(interpolation="bilinear") uses half-pixel centres, i.e. align_corners=False
    return UpSample(2, scale_factor=2, mode="nontrainable", pre_conv=None, interp_mode="bilinear", align_corners=False)


def _conv3x3_relu(in_channels: int, out_channels: int) -> Convolution:
    """3x3 conv + ReLU, He-normal weights and zero bias (Keras ``he_normal``/``zeros``)."""
    block = Convolution(2, in_channels, out_channels, kernel_size=3, act=(Act.RELU, {"inplace": True}), norm=None)
    nn.init.kaiming_normal_(block.conv.weight, mode="fan_in", nonlinearity="relu")
    nn.init.zeros_(block.conv.bias)
    return block


def _dropout(rate: float) -> nn.Module:
    return nn.Dropout(rate) if rate > 0 else nn.Identity()


class UpBlock(nn.Module):
    """Bilinear x2 upsample, concatenate the skip, two 3x3 conv + ReLU, dropout, squeeze-and-excitation.

    Args:
        in_channels: channels of the deeper feature map.
        skip_channels: channels of the skip feature map.
        out_channels: filters of both convolutions.
        dropout: dropout rate after the convolutions (0 for none).
        se_ratio: reduction ratio of the closing SE block.
    """

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, dropout: float = 0.3, se_ratio: int = 32
    ) -> None:
        super().__init__()
        self.upsample = _upsample_x2()
        self.convs = nn.Sequential(
            _conv3x3_relu(in_channels + skip_channels, out_channels), _conv3x3_relu(out_channels, out_channels)
        )
        self.dropout = _dropout(dropout)
        self.attention = SqueezeExcitation(2, out_channels, ratio=se_ratio)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Decode ``x`` to the skip's resolution."""
        x = torch.cat([self.upsample(x), skip], dim=1)
        return self.attention(self.dropout(self.convs(x)))


class SSCASEDecoder(nn.Module):
    """SE on every skip, coordinate attention on the bottleneck, then one ``UpBlock`` per skip, deepest first.

    Args:
        encoder_channels: channels of the encoder features, shallowest first; the last one is the bottleneck.
        decoder_channels: filters of the up blocks, deepest first (one per skip).
        dropout: dropout rate inside every up block (0 for none).
        se_ratio: reduction ratio of the SE blocks.
        ca_reduction: reduction ratio of the coordinate attention.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int] = (96, 144, 240, 480, 1280),
        decoder_channels: Sequence[int] = (128, 64, 32, 16),
        dropout: float = 0.3,
        se_ratio: int = 32,
        ca_reduction: int = 32,
    ) -> None:
        super().__init__()
        *skip_channels, bottleneck_channels = encoder_channels
        if len(decoder_channels) != len(skip_channels):
            raise ValueError(
                f"decoder_channels needs one entry per skip ({len(skip_channels)}), got {tuple(decoder_channels)!r}"
            )
        self.skip_attention = nn.ModuleList(SqueezeExcitation(2, c, ratio=se_ratio) for c in skip_channels)
        self.bottleneck_attention = CoordinateAttention(2, bottleneck_channels, reduction=ca_reduction)
        blocks = []
        in_channels = bottleneck_channels
        for skip, out in zip(reversed(skip_channels), decoder_channels, strict=True):
            blocks.append(UpBlock(in_channels, skip, out, dropout=dropout, se_ratio=se_ratio))
            in_channels = out
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = in_channels

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decode encoder ``features`` (shallowest first, bottleneck last) to the shallowest skip's resolution."""
        *skips, bottleneck = features
        skips = [attention(skip) for attention, skip in zip(self.skip_attention, skips, strict=True)]
        x = self.bottleneck_attention(bottleneck)
        for block, skip in zip(self.blocks, reversed(skips), strict=True):
            x = block(x, skip)
        return x


class SegmentationHead(nn.Module):
    """Bilinear x2 upsample to full resolution, two 3x3 conv + ReLU, dropout, 1x1 conv to logits.

    Args:
        in_channels: channels of the decoder output.
        out_channels: number of output channels (classes).
        channels: filters of the two 3x3 convolutions.
        dropout: dropout rate before the output conv (0 for none).
    """

    def __init__(self, in_channels: int, out_channels: int, channels: int = 8, dropout: float = 0.2) -> None:
        super().__init__()
        self.upsample = _upsample_x2()
        self.convs = nn.Sequential(_conv3x3_relu(in_channels, channels), _conv3x3_relu(channels, channels))
        self.dropout = _dropout(dropout)
        self.output = Conv[Conv.CONV, 2](channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at twice the resolution of ``x``."""
        return self.output(self.dropout(self.convs(self.upsample(x))))


class SSCASEUNet(nn.Module):
    """SS_CASE_UNet for 2-D segmentation; returns logits ``(B, out_channels, H, W)``.

    Parameter groups for the three training stages: ``encoder_parameters()`` (the EfficientNet) and
    ``decoder_parameters()`` (everything else: SE, coordinate attention, up blocks, head). ``freeze_encoder()`` stops
    the encoder's gradients and batch-norm statistics even in ``train()`` mode. Freeze or unfreeze before wrapping the
    model in ``DistributedDataParallel`` (rebuild the wrapper between stages): DDP fixes its parameter set when built.

    Args:
        in_channels: input channels (3: gray images are replicated to RGB).
        out_channels: 1 for binary (sigmoid on the logits), K+1 for K foreground classes (softmax).
        encoder: ``"efficientnet-lite0"`` (ImageNet weights available offline) or ``"efficientnet-b0"`` (the paper's).
        pretrained: ``None``/``False``, ``True`` (ImageNet) or a path to an encoder state dict; see
            ``EfficientNetSkipEncoder``.
        dropout: ``False`` removes every dropout layer.
        decoder_channels: filters of the four up blocks, deepest first.
        head_channels: filters of the full-resolution head.
        decoder_dropout: dropout rate in the up blocks.
        head_dropout: dropout rate in the head.
        se_ratio: reduction ratio of every SE block.
        ca_reduction: reduction ratio of the coordinate attention.
        bn_momentum: encoder batch-norm momentum (0.1; MONAI's TF-style 0.01 lagged in eval mode from scratch).
        drop_connect_rate: encoder stochastic-depth rate.
        allow_download: allow b0's ``pretrained=True`` to download MONAI's weights.

    Raises:
        ValueError: for an unknown encoder, bad channel counts, or (in ``forward``) an input whose sides are not
            multiples of 32.
        PretrainedWeightsError: when requested pretrained weights cannot be loaded.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        encoder: str = "efficientnet-lite0",
        pretrained: bool | str | os.PathLike | None = None,
        dropout: bool = True,
        decoder_channels: Sequence[int] = (128, 64, 32, 16),
        head_channels: int = 8,
        decoder_dropout: float = 0.3,
        head_dropout: float = 0.2,
        se_ratio: int = 32,
        ca_reduction: int = 32,
        bn_momentum: float = 0.1,
        drop_connect_rate: float = 0.2,
        allow_download: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.encoder = EfficientNetSkipEncoder(
            encoder,
            in_channels=in_channels,
            pretrained=pretrained,
            bn_momentum=bn_momentum,
            drop_connect_rate=drop_connect_rate,
            allow_download=allow_download,
        )
        self.decoder = SSCASEDecoder(
            self.encoder.out_channels,
            decoder_channels,
            dropout=decoder_dropout if dropout else 0.0,
            se_ratio=se_ratio,
            ca_reduction=ca_reduction,
        )
        self.head = SegmentationHead(
            self.decoder.out_channels, out_channels, channels=head_channels, dropout=head_dropout if dropout else 0.0
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, H, W)`` for images ``(B, in_channels, H, W)``, H and W multiples of 32."""
        if (
            x.ndim != 4
            or x.shape[1] != self.in_channels
            or x.shape[-2] % INPUT_MULTIPLE
            or x.shape[-1] % INPUT_MULTIPLE
        ):
            raise ValueError(
                f"SSCASEUNet needs input (B, {self.in_channels}, H, W) with H and W multiples of {INPUT_MULTIPLE}, "
                f"got shape {tuple(x.shape)}"
            )
        return self.head(self.decoder(self.encoder(x)))

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the EfficientNet encoder."""
        return self.encoder.parameters()

    def decoder_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter outside the encoder: skip SE, coordinate attention, up blocks and head."""
        encoder_ids = {id(p) for p in self.encoder.parameters()}
        return (p for p in self.parameters() if id(p) not in encoder_ids)

    @property
    def encoder_frozen(self) -> bool:
        """Whether ``freeze_encoder()`` is in effect."""
        return self.encoder.frozen

    def freeze_encoder(self) -> None:
        """Stage 1: no encoder gradients, encoder batch norm in eval mode even under ``train()``."""
        self.encoder.freeze()

    def unfreeze_encoder(self) -> None:
        """Stages 2-3: train the encoder again (it follows this model's current train/eval mode)."""
        self.encoder.unfreeze()
        self.encoder.train(self.training)


def enable_mc_dropout(model: nn.Module) -> int:
    """Put ``model`` in eval mode except its dropout layers, for Monte-Carlo dropout sampling.

    Batch norm keeps its running statistics; each forward pass draws a new dropout mask. ``model.eval()`` undoes it.

    Args:
        model: a network with dropout layers (e.g. ``SSCASEUNet(dropout=True)``).

    Returns:
        the number of dropout layers switched to train mode.

    Raises:
        ValueError: when ``model`` has no dropout layer (e.g. built with ``dropout=False``).
    """
    model.eval()
    dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    if not dropouts:
        raise ValueError(f"{type(model).__name__} has no dropout layers; build it with dropout enabled for MC dropout")
    for module in dropouts:
        module.train()
    return len(dropouts)
