"""Tests for sscase_monai.uncertainty: MC-dropout predictive entropy and TTA disagreement."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sscase_monai.uncertainty import mc_dropout_entropy, predictive_entropy, tta_uncertainty

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class DropoutNet(nn.Module):
    """logits = 3 * dropout(x) (per pixel); counts forward calls and the batch sizes it saw."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(p)
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        return 3.0 * self.dropout(x)


class BatchNormDropoutNet(nn.Module):
    """Conv -> BatchNorm -> Dropout2d -> Conv: BN must stay in eval mode while dropout samples."""

    def __init__(self, p: float, out_channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, kernel_size=1)
        self.norm = nn.BatchNorm2d(4)
        self.dropout = nn.Dropout2d(p)
        self.head = nn.Conv2d(4, out_channels, kernel_size=1)
        with torch.no_grad():  # running statistics far from any batch's, so train-mode BN would change the output
            self.norm.running_mean.fill_(5.0)
            self.norm.running_var.fill_(4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.norm(self.conv(x))))


def binary_entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_predictive_entropy_known_values() -> None:
    binary = torch.tensor([0.5, 0.0, 1.0, 0.9]).reshape(1, 1, 2, 2)
    expected = torch.tensor([[math.log(2), 0.0], [0.0, binary_entropy(0.9)]])
    torch.testing.assert_close(predictive_entropy(binary)[0], expected)
    uniform = torch.full((1, 3, 2, 2), 1 / 3)
    torch.testing.assert_close(predictive_entropy(uniform), torch.full((1, 2, 2), math.log(3)))


def test_without_dropout_equals_the_deterministic_entropy() -> None:
    images = torch.ones(2, 1, 4, 4)
    score = mc_dropout_entropy(DropoutNet(p=0.0), images, num_samples=4)
    expected = binary_entropy(1 / (1 + math.exp(-3.0)))
    torch.testing.assert_close(score, torch.full((2,), expected))


def test_model_with_no_dropout_layer_warns_and_is_deterministic(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = nn.Conv2d(1, 3, kernel_size=1)
    images = torch.rand(2, 1, 8, 8)
    score = mc_dropout_entropy(model, images, num_samples=3)
    with torch.no_grad():
        expected = predictive_entropy(torch.softmax(model(images), dim=1)).mean(dim=(1, 2))
    torch.testing.assert_close(score, expected)
    assert "no dropout layer" in caplog.text


def test_more_dropout_gives_a_higher_score() -> None:
    images = torch.ones(1, 1, 16, 16)
    scores = [mc_dropout_entropy(DropoutNet(p), images, num_samples=16, seed=0).item() for p in (0.0, 0.1, 0.5)]
    assert scores[0] < scores[1] < scores[2]
    assert scores[2] <= math.log(2)


def test_samples_are_batched_in_one_forward_pass_or_chunks() -> None:
    model = DropoutNet(p=0.3)
    mc_dropout_entropy(model, torch.ones(3, 1, 4, 4), num_samples=8)
    assert model.batch_sizes == [24]
    chunked = DropoutNet(p=0.3)
    mc_dropout_entropy(chunked, torch.ones(3, 1, 4, 4), num_samples=8, max_batch_size=10)
    assert chunked.batch_sizes == [10, 10, 4]


def test_each_image_gets_its_own_score() -> None:
    images = torch.stack([torch.full((1, 4, 4), 3.0), torch.zeros(1, 4, 4)])  # sure vs. p = 0.5 everywhere
    score = mc_dropout_entropy(DropoutNet(p=0.0), images, num_samples=2)
    assert score[0].item() == pytest.approx(binary_entropy(1 / (1 + math.exp(-9.0))), rel=1e-4)
    assert score[1].item() == pytest.approx(math.log(2))


def test_seed_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    model = DropoutNet(p=0.5)
    images = torch.ones(2, 1, 8, 8)
    state = torch.get_rng_state()
    first = mc_dropout_entropy(model, images, num_samples=4, seed=123)
    second = mc_dropout_entropy(model, images, num_samples=4, seed=123)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, second)
    assert not torch.equal(first, mc_dropout_entropy(model, images, num_samples=4, seed=7))


def test_batch_norm_stays_in_eval_and_modes_are_restored() -> None:
    torch.manual_seed(0)
    model = BatchNormDropoutNet(p=0.0)
    model.train()
    model.head.eval()  # a mixed state that must come back as it was
    running_mean = model.norm.running_mean.clone()
    images = torch.rand(2, 1, 8, 8)
    score = mc_dropout_entropy(model, images, num_samples=4)

    assert model.training and model.norm.training and model.dropout.training and not model.head.training
    assert torch.equal(model.norm.running_mean, running_mean)  # eval-mode BN never updated its statistics
    model.eval()
    with torch.no_grad():
        expected = predictive_entropy(torch.sigmoid(model(images))).mean(dim=(1, 2))
    torch.testing.assert_close(score, expected)


def test_dropout_is_active_even_when_the_model_was_in_eval_mode() -> None:
    torch.manual_seed(0)
    images = torch.rand(2, 1, 8, 8)
    model = BatchNormDropoutNet(p=0.5, out_channels=3).eval()
    noisy = mc_dropout_entropy(model, images, num_samples=8, seed=0)
    assert not model.training and not model.dropout.training
    model.dropout.p = 0.0
    plain = mc_dropout_entropy(model, images, num_samples=8, seed=0)
    assert not torch.allclose(noisy, plain)


@pytest.mark.parametrize("device", DEVICES)
def test_runs_on_the_inputs_device(device: str) -> None:
    model = BatchNormDropoutNet(p=0.3).to(device)
    score = mc_dropout_entropy(model, torch.rand(2, 1, 8, 8, device=device), num_samples=4, seed=1)
    assert score.shape == (2,) and score.device.type == device
    again = mc_dropout_entropy(model, torch.rand(2, 1, 8, 8, device=device), num_samples=4, seed=1)
    assert torch.isfinite(again).all()


def test_tta_uncertainty() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 1, 8, 8, generator=generator)
    assert torch.allclose(tta_uncertainty(lambda x: 2 * x, images), torch.zeros(2), atol=1e-7)
    ramp = torch.linspace(-4, 4, 8).expand(8, 8)  # not flip-equivariant: the views disagree
    assert (tta_uncertainty(lambda x: x + ramp, images) > 0.01).all()


def test_rejects_bad_arguments() -> None:
    model = DropoutNet(p=0.1)
    with pytest.raises(ValueError, match="num_samples"):
        mc_dropout_entropy(model, torch.ones(1, 1, 4, 4), num_samples=0)
    with pytest.raises(ValueError, match="activation"):
        mc_dropout_entropy(model, torch.ones(1, 1, 4, 4), activation="tanh")
    with pytest.raises(ValueError, match="images"):
        mc_dropout_entropy(model, torch.ones(4, 4))
    with pytest.raises(ValueError, match="max_batch_size"):
        mc_dropout_entropy(model, torch.ones(1, 1, 4, 4), max_batch_size=0)
