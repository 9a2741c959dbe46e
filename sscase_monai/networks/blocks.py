"""Attention blocks of SS_CASE_UNet: channel Squeeze-and-Excitation and Coordinate Attention.

Both follow MONAI's block conventions: ``spatial_dims`` first, layers from ``monai.networks.layers.factories``, a bad
argument raises ``ValueError`` naming the value.
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Act, Conv, Norm, Pool
from torch import nn

__all__ = ["CoordinateAttention", "SqueezeExcitation"]


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class SqueezeExcitation(nn.Module):
    """Channel Squeeze-and-Excitation (Hu et al. 2018, "Squeeze-and-Excitation Networks", CVPR).

    Global average pool, ``Linear(C -> max(1, C // ratio), bias=False)``, ReLU, ``Linear(-> C, bias=False)``, sigmoid;
    the input is multiplied channel-wise by the result.

    MONAI's ``ChannelSELayer`` is not used because it differs from the method on two points: its dense layers always
    carry a bias (the method's are bias-free), and it rejects ``channels < ratio`` while SS_CASE_UNet applies ratio 32
    to 16- and 32-channel decoder outputs. Here the hidden width is ``max(1, channels // ratio)``; with 16 channels a
    Keras ``Dense(16 // 32)`` would have zero units (a constant 0.5 gate), so one unit is the nearest working choice.

    Args:
        spatial_dims: number of spatial dimensions (1, 2 or 3).
        channels: number of input (and output) channels.
        ratio: reduction ratio ``r`` of the hidden layer.

    Raises:
        ValueError: when ``spatial_dims`` is not 1, 2 or 3, or ``channels``/``ratio`` is not a positive integer.
    """

    def __init__(self, spatial_dims: int, channels: int, ratio: int = 32) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
        _check_positive("channels", channels)
        _check_positive("ratio", ratio)
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.hidden_channels = max(1, channels // ratio)
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.fc = nn.Sequential(
            nn.Linear(channels, self.hidden_channels, bias=False),
            Act[Act.RELU](inplace=True),
            nn.Linear(self.hidden_channels, channels, bias=False),
            Act[Act.SIGMOID](),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Re-weight the channels of ``x`` (shape ``(B, C, *spatial)``)."""
        b, c = x.shape[:2]
        weights = self.fc(self.pool(x).flatten(1))
        return x * weights.view(b, c, *([1] * (x.ndim - 2)))


class CoordinateAttention(nn.Module):
    """Coordinate Attention (Hou et al. 2021, "Coordinate Attention for Efficient Mobile Network Design", CVPR).

    Average-pool along the width and along the height separately, concatenate the two strips, a shared 1x1 conv to
    ``max(min_channels, channels // reduction)`` channels + batch norm + ReLU (the method uses ReLU where the paper
    uses h-swish), split, one 1x1 conv + sigmoid per direction back to ``channels``, and multiply the input by both
    attention maps. The convolutions carry a bias, as in the paper's code and Keras' ``Conv2D`` default; the batch
    norm uses PyTorch's defaults.

    Only 2-D inputs are supported (the block attends to rows and columns).

    Args:
        spatial_dims: number of spatial dimensions; must be 2.
        channels: number of input (and output) channels.
        reduction: reduction ratio of the shared layer.
        min_channels: lower bound on the shared layer's width.

    Raises:
        ValueError: when ``spatial_dims`` is not 2, or ``channels``/``reduction``/``min_channels`` is not a positive
            integer.
    """

    def __init__(self, spatial_dims: int, channels: int, reduction: int = 32, min_channels: int = 8) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"CoordinateAttention supports only spatial_dims=2, got {spatial_dims!r}")
        _check_positive("channels", channels)
        _check_positive("reduction", reduction)
        _check_positive("min_channels", min_channels)
        conv_type = Conv[Conv.CONV, spatial_dims]
        self.channels = channels
        self.mid_channels = max(min_channels, channels // reduction)
        self.conv_shared = conv_type(channels, self.mid_channels, kernel_size=1)
        self.norm = Norm[Norm.BATCH, spatial_dims](self.mid_channels)
        self.act = Act[Act.RELU](inplace=True)
        self.conv_h = conv_type(self.mid_channels, channels, kernel_size=1)
        self.conv_w = conv_type(self.mid_channels, channels, kernel_size=1)
        self.gate = Act[Act.SIGMOID]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Re-weight ``x`` (shape ``(B, C, H, W)``) by a row map ``(B, C, H, 1)`` and a column map ``(B, C, 1, W)``."""
        height, width = x.shape[-2:]
        pooled_h = x.mean(dim=3, keepdim=True)  # (B, C, H, 1): pooled along the width
        pooled_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # (B, C, W, 1): pooled along the height
        y = self.act(self.norm(self.conv_shared(torch.cat([pooled_h, pooled_w], dim=2))))
        y_h, y_w = torch.split(y, [height, width], dim=2)
        attention_h = self.gate(self.conv_h(y_h))
        attention_w = self.gate(self.conv_w(y_w.transpose(2, 3)))
        return x * attention_h * attention_w
