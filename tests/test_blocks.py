"""SqueezeExcitation and CoordinateAttention against their formulas written out in plain torch."""

from __future__ import annotations

import pytest
import torch

from sscase_monai.networks.blocks import CoordinateAttention, SqueezeExcitation

pytestmark = pytest.mark.usefixtures("seeded_one_thread")  # tests/conftest.py


@pytest.mark.parametrize(("spatial_dims", "channels", "hidden"), [(2, 96, 3), (2, 16, 1), (3, 64, 2), (1, 480, 15)])
def test_squeeze_excitation_matches_formula(spatial_dims: int, channels: int, hidden: int) -> None:
    block = SqueezeExcitation(spatial_dims, channels, ratio=32)
    x = torch.randn(2, channels, *([5] * spatial_dims))
    w1, w2 = block.fc[0].weight, block.fc[2].weight
    assert w1.shape == (hidden, channels) and w2.shape == (channels, hidden)
    assert all(layer.bias is None for layer in (block.fc[0], block.fc[2]))

    squeezed = x.flatten(2).mean(dim=2)  # (B, C)
    gate = torch.sigmoid(torch.relu(squeezed @ w1.T) @ w2.T)
    expected = x * gate.view(2, channels, *([1] * spatial_dims))
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spatial_dims": 4, "channels": 8}, "spatial_dims"),
        ({"spatial_dims": 2, "channels": 0}, "channels"),
        ({"spatial_dims": 2, "channels": 8, "ratio": 0}, "ratio"),
    ],
)
def test_squeeze_excitation_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SqueezeExcitation(**kwargs)


@pytest.mark.parametrize(("channels", "mid"), [(1280, 40), (64, 8), (512, 16)])
def test_coordinate_attention_width(channels: int, mid: int) -> None:
    block = CoordinateAttention(2, channels)
    assert block.mid_channels == mid
    assert block.conv_shared.out_channels == mid and block.conv_h.in_channels == mid
    assert block.norm.momentum == 0.1 and block.norm.eps == 1e-5  # PyTorch defaults


def _coordinate_attention_by_hand(block: CoordinateAttention, x: torch.Tensor) -> torch.Tensor:
    """Hou et al. 2021 with the method's ReLU, batch norm in eval mode, from the block's weights."""

    def conv1x1(t: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
        return torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], t) + conv.bias.view(1, -1, 1, 1)

    height = x.shape[2]
    strips = torch.cat([x.mean(dim=3), x.mean(dim=2)], dim=2).unsqueeze(-1)  # (B, C, H + W, 1)
    y = conv1x1(strips, block.conv_shared)
    bn = block.norm
    y = (y - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
    y = torch.relu(y * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1))
    attention_h = torch.sigmoid(conv1x1(y[:, :, :height], block.conv_h))  # (B, C, H, 1)
    attention_w = torch.sigmoid(conv1x1(y[:, :, height:], block.conv_w)).transpose(2, 3)  # (B, C, 1, W)
    return x * attention_h * attention_w


def test_coordinate_attention_matches_formula() -> None:
    block = CoordinateAttention(2, 64)
    with torch.no_grad():
        block.norm.running_mean.uniform_(-0.5, 0.5)
        block.norm.running_var.uniform_(0.5, 2.0)
        block.norm.weight.uniform_(0.5, 1.5)
        block.norm.bias.uniform_(-0.2, 0.2)
    block.eval()
    x = torch.randn(2, 64, 6, 9)  # H != W: rows and columns must not be swapped
    out = block(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, _coordinate_attention_by_hand(block, x))


def test_coordinate_attention_is_2d_only() -> None:
    with pytest.raises(ValueError, match="spatial_dims=2.*3"):
        CoordinateAttention(3, 64)
    with pytest.raises(ValueError, match="reduction"):
        CoordinateAttention(2, 64, reduction=0)
