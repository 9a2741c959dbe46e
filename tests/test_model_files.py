"""Model files: the spec (with the baseline architectures), save/load round trips, fp16 storage, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from sscase_monai.evaluation import evaluate_model
from sscase_monai.inference import Predictor
from sscase_monai.model_files import (
    ARCHITECTURES,
    BASELINE_BN_MOMENTUM,
    ModelSpec,
    atomic_copy,
    atomic_write_bytes,
    load_model,
    read_sidecar,
    read_spec,
    save_model,
    sidecar_path,
)
from sscase_monai.training import SemiSupervisedTrainer, TrainingConfig

SIZE = 64
SPECS = {
    "sscase_unet": ModelSpec(input_size=SIZE),
    "basic_unet": ModelSpec(architecture="basic_unet", input_size=SIZE),
    "flexible_unet": ModelSpec(architecture="flexible_unet", encoder="efficientnet-b0", input_size=SIZE),
}


def _network(spec: ModelSpec) -> nn.Module:
    torch.manual_seed(0)
    return spec.build_network().eval()


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> list[dict[str, str]]:
    """Three 48x80 PNG images of a bright disc with {0, 1} disc labels."""
    root = tmp_path_factory.mktemp("pairs")
    rows, cols = np.mgrid[:48, :80]
    pairs = []
    for i, (r, c, radius) in enumerate([(20, 30, 10), (28, 50, 12), (24, 40, 8)]):
        disc = (rows - r) ** 2 + (cols - c) ** 2 <= radius**2
        image = np.where(disc, 200, 40).astype(np.uint8) + np.random.default_rng(i).integers(
            0, 20, disc.shape, np.uint8
        )
        pair = {"image": str(root / f"{i:03d}_HC.png"), "label": str(root / "labels" / f"{i:03d}_HC.png")}
        Path(pair["label"]).parent.mkdir(exist_ok=True)
        sitk.WriteImage(sitk.GetImageFromArray(image), pair["image"])
        sitk.WriteImage(sitk.GetImageFromArray(disc.astype(np.uint8)), pair["label"])
        pairs.append(pair)
    return pairs


# ----------------------------------------------------------------------------------------------------------------
# The spec's architecture
# ----------------------------------------------------------------------------------------------------------------


def test_default_architecture_and_sidecars_without_it_load_as_sscase_unet(tmp_path):
    assert ModelSpec().architecture == "sscase_unet"
    assert ARCHITECTURES == ("sscase_unet", "basic_unet", "flexible_unet")
    old = ModelSpec().to_dict()
    del old["architecture"]
    assert ModelSpec.from_dict(old).architecture == "sscase_unet"
    sidecar_path(tmp_path / "old.pt").write_text(json.dumps({"format": "sscase-monai/1", "spec": old}))
    assert read_spec(tmp_path / "old.pt") == ModelSpec()
    assert ModelSpec.from_dict(SPECS["basic_unet"].to_dict()) == SPECS["basic_unet"]


def test_unknown_architecture_or_backbone_is_refused():
    with pytest.raises(ValueError, match="architecture must be one of .* got 'unet'"):
        ModelSpec(architecture="unet")
    with pytest.raises(ValueError, match="FlexibleUNet backbone .* got 'efficientnet-lite0'"):
        ModelSpec(architecture="flexible_unet")


@pytest.mark.parametrize("architecture", ["basic_unet", "flexible_unet"])
def test_baselines_return_one_channel_logits_and_have_no_encoder_to_freeze(architecture):
    network = _network(SPECS[architecture])
    with torch.no_grad():
        assert network(torch.rand(2, 3, SIZE, SIZE)).shape == (2, 1, SIZE, SIZE)
    assert not hasattr(network, "freeze_encoder")
    with pytest.raises(ValueError, match=f"{architecture} baseline trains from scratch; got pretrained=True"):
        SPECS[architecture].build_network(pretrained=True)


def test_flexible_unet_batch_norm_momentum_is_0_1_everywhere():
    norms = [m for m in _network(SPECS["flexible_unet"]).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and {m.momentum for m in norms} == {BASELINE_BN_MOMENTUM} == {0.1}


# ----------------------------------------------------------------------------------------------------------------
# Saving and loading
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", sorted(SPECS))
def test_save_load_round_trip(architecture, tmp_path):
    spec = SPECS[architecture]
    network = _network(spec)
    path = save_model(tmp_path / "model.pt", network, spec, extra={"note": "round trip"})
    loaded, loaded_spec = load_model(path)
    assert loaded_spec == spec and not loaded.training and type(loaded) is type(network)
    assert read_sidecar(path)["note"] == "round trip"
    assert read_sidecar(path)["spec"]["architecture"] == architecture
    expected = network.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), network(x))


def test_non_square_input_round_trips_through_the_sidecar(tmp_path):
    spec = ModelSpec(input_size=(64, 96))
    assert spec.input_shape == (64, 96) and ModelSpec(input_size=[64, 64]).input_size == 64
    network = _network(spec)
    path = save_model(tmp_path / "model.pt", network, spec)
    assert read_sidecar(path)["spec"]["input_size"] == [64, 96]
    loaded, loaded_spec = load_model(path)
    assert loaded_spec == spec and loaded_spec.input_size == (64, 96)
    with torch.no_grad():
        assert loaded(torch.rand(1, 3, 64, 96)).shape == (1, 1, 64, 96)


@pytest.mark.parametrize("size", [0, 100, (64, 100), (64,), (64, 96, 32), "64"])
def test_input_size_other_than_multiples_of_32_is_refused_showing_it(size):
    with pytest.raises(ValueError, match="input_size must be a side or"):
        ModelSpec(input_size=size)


def test_fp16_storage_halves_floats_and_loads_back_as_float32(tmp_path):
    spec = SPECS["flexible_unet"]
    network = _network(spec)
    full = save_model(tmp_path / "full.pt", network, spec)
    half = save_model(tmp_path / "half.pt", network, spec, half=True)
    stored = torch.load(half, weights_only=True)
    original = network.state_dict()
    assert all(
        v.dtype == (torch.float16 if original[k].is_floating_point() else original[k].dtype) for k, v in stored.items()
    )
    assert read_sidecar(half)["half"] is True
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, _ = load_model(half)
    for key, value in loaded.state_dict().items():
        assert value.dtype == original[key].dtype
        torch.testing.assert_close(value, original[key], rtol=1e-3, atol=1e-4)


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    save_model(tmp_path / "model.pt", _network(SPECS["basic_unet"]), SPECS["basic_unet"])
    assert _files(tmp_path) == ["model.json", "model.pt"]
    target = tmp_path / "notes.txt"
    target.write_text("old")

    def fail(f):
        f.write(b"half written")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, fail)
    assert target.read_text() == "old"
    assert _files(tmp_path) == ["model.json", "model.pt", "notes.txt"]


def test_atomic_copy_replaces_the_target_whole_and_keeps_open_permissions(tmp_path):
    source, target = tmp_path / "new.bin", tmp_path / "published.bin"
    source.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    target.write_bytes(b"old")
    assert atomic_copy(source, target) == target
    assert target.read_bytes() == source.read_bytes()
    assert _files(tmp_path) == ["new.bin", "published.bin"]
    assert target.stat().st_mode & 0o777 == source.stat().st_mode & 0o777


def test_mismatched_file_is_a_clear_error(tmp_path):
    path = save_model(tmp_path / "model.pt", _network(SPECS["basic_unet"]), SPECS["basic_unet"])
    with pytest.raises(ValueError, match=r"model\.pt does not fit the network .*missing keys"):
        load_model(path, spec=SPECS["sscase_unet"])
    sidecar = json.loads(sidecar_path(path).read_text())
    sidecar["spec"]["architecture"] = "flexible_unet"
    sidecar["spec"]["encoder"] = "efficientnet-b0"
    sidecar_path(path).write_text(json.dumps(sidecar))
    with pytest.raises(ValueError, match=r"model\.pt does not fit the network .*architecture='flexible_unet'"):
        load_model(path)
    wide = ModelSpec.for_labels({"a": 1, "b": 2}, architecture="basic_unet", input_size=SIZE)
    with pytest.raises(ValueError, match=r"model\.pt does not fit the network .* has shape \(1, 32, 1, 1\)"):
        load_model(path, spec=wide)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"junk\.pt: not a readable state dict"):
        load_model(tmp_path / "junk.pt", spec=SPECS["basic_unet"])


# ----------------------------------------------------------------------------------------------------------------
# Baselines through the trainer, the predictor and the evaluation
# ----------------------------------------------------------------------------------------------------------------


def _config(architecture: str, stages: tuple[int, ...]) -> TrainingConfig:
    return TrainingConfig(
        spec=SPECS[architecture],
        pretrained=False,
        run_stages=stages,
        batch_size=2,
        samples_per_image=1,
        device="cpu",
        progress=False,
        tensorboard=False,
    ).with_stage_settings(epochs=(1,), lr=(1e-3,))


def test_trainer_refuses_stage_1_for_a_baseline(labelled, tmp_path):
    trainer = SemiSupervisedTrainer(_config("basic_unet", (1, 2)), labelled[:2], labelled[2:], out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"'basic_unet' network has no freeze_encoder\(\); run stages \(2,\)"):
        trainer.run()
    assert not (tmp_path / "stage1_best.pt").exists()


def test_baseline_trains_stage_2_then_predicts_and_evaluates(labelled, tmp_path):
    result = SemiSupervisedTrainer(_config("basic_unet", (2,)), labelled[:2], labelled[2:], out_dir=tmp_path).run()
    assert result.model_path is not None and set(result.stages) == {2}
    assert read_spec(tmp_path / "stage2_best.pt").architecture == "basic_unet"
    predictor = Predictor.from_file(result.model_path, device="cpu")
    prediction = predictor.predict(labelled[2]["image"])
    assert prediction.mask.shape == (48, 80) and prediction.probabilities.shape == (1, 48, 80)
    evaluation = evaluate_model(predictor, labelled, spacing_lookup={"000_HC": 0.1, "001_HC": 0.1, "002_HC": 0.2})
    assert evaluation.hd95_unit == "mm" and evaluation.metrics["num_images"] == 3
    assert 0.0 <= evaluation.metrics["pooled"]["dice"] <= 1.0
