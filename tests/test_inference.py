"""Inference helpers: the inference-only network optimisation (outputs unchanged, batch norm folded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.nets import BasicUNet, FlexibleUNet
from monai.networks.nets.efficientnet import MBConvBlock
from torch import nn

from sscase_monai.inference import Predictor, optimize_for_inference
from sscase_monai.model_files import ModelSpec, save_model
from sscase_monai.networks import SSCASEUNet, enable_mc_dropout


def _with_trained_batch_norm(network: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm non-trivial statistics and affine weights, as a trained network has."""
    generator = torch.Generator().manual_seed(seed)
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return network.eval()


def _batch_norms(network: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in network.modules())


@pytest.mark.parametrize(
    "build",
    [
        lambda: SSCASEUNet(encoder="efficientnet-lite0"),
        lambda: SSCASEUNet(encoder="efficientnet-b0"),
        lambda: FlexibleUNet(3, 1, backbone="efficientnet-b0", pretrained=False, spatial_dims=2),
        lambda: BasicUNet(spatial_dims=2, in_channels=3, out_channels=1, features=(8, 8, 16, 32, 64, 8)),
    ],
    ids=["sscase-lite0", "sscase-b0", "flexible-unet-b0", "basic-unet"],
)
def test_optimized_network_gives_the_same_outputs_and_leaves_the_original_alone(build):
    torch.manual_seed(0)
    network = _with_trained_batch_norm(build())
    before = {k: v.clone() for k, v in network.state_dict().items()}
    norms = _batch_norms(network)
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        expected = network(x)
        optimized = optimize_for_inference(network)
        got = optimized(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not optimized.training
    assert optimized is not network and _batch_norms(network) == norms
    assert all(torch.equal(v, before[k]) for k, v in network.state_dict().items())
    conv = next(m for m in optimized.modules() if isinstance(m, nn.Conv2d) and m.weight.ndim == 4)
    # channels-last on the CPU by default, except where instance norm makes it slower (BasicUNet)
    instance_norm = any(isinstance(m, nn.InstanceNorm2d) for m in network.modules())
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) != instance_norm


def test_batch_norm_and_symmetric_padding_are_folded_in_efficientnet_blocks():
    network = _with_trained_batch_norm(SSCASEUNet(encoder="efficientnet-b0"))
    optimized = optimize_for_inference(network, channels_last=False)
    blocks = [m for m in optimized.modules() if isinstance(m, MBConvBlock)]
    assert blocks and all(not isinstance(getattr(b, name), nn.BatchNorm2d) for b in blocks for name in ("_bn1", "_bn2"))
    assert not isinstance(optimized.encoder._bn0, nn.BatchNorm2d)
    assert not isinstance(optimized.encoder._bn1, nn.BatchNorm2d)
    # stride-1 depthwise convolutions pad symmetrically: the pad module is gone, the convolution pads itself
    stride_one = [b for b in blocks if b._depthwise_conv.stride == (1, 1)]
    assert stride_one and all(isinstance(b._depthwise_conv_padding, nn.Identity) for b in stride_one)
    assert all(b._depthwise_conv.padding == (b._depthwise_conv.kernel_size[0] // 2,) * 2 for b in stride_one)
    assert _batch_norms(optimized) == 1  # only the coordinate attention's, outside the encoder
    weight = optimized.encoder._conv_stem.weight
    assert weight.is_contiguous() and not weight.is_contiguous(memory_format=torch.channels_last)


def test_optimized_network_keeps_mc_dropout():
    network = _with_trained_batch_norm(SSCASEUNet(encoder="efficientnet-lite0", dropout=True))
    optimized = optimize_for_inference(network, inplace=True)
    assert optimized is network
    assert enable_mc_dropout(optimized) > 0
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.manual_seed(1)
        first = optimized(x)
        torch.manual_seed(2)
        second = optimized(x)
    assert not torch.equal(first, second)  # dropout still samples a new mask per pass


def test_predictor_from_file_predicts_as_the_plain_network(tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec(input_size=64)
    network = _with_trained_batch_norm(spec.build_network())
    path = save_model(tmp_path / "model.pt", network, spec)
    predictor = Predictor.from_file(path, device="cpu")
    assert _batch_norms(predictor.network) < _batch_norms(network)
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        expected = torch.sigmoid(network(images))
    for tta in (False, True):
        got = predictor.predict_batch(images, tta=tta)
        assert got.shape == (3, 1, 64, 64)
        if not tta:
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    image = (np.random.default_rng(0).random((80, 100)) * 255).astype(np.uint8)
    prediction = predictor.predict(image)
    assert prediction.mask.shape == (80, 100) and prediction.probabilities.shape == (1, 80, 100)
