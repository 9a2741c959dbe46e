"""Tests for sscase_monai.losses: the hybrid BCE + soft Dice loss and the consistency term."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sscase_monai.losses import ConsistencyLoss, SegmentationLoss

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def keras_style_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-6) -> torch.Tensor:
    """The notebook's loss written out: 0.5 * BCE + 0.5 * (1 - soft Dice over the whole batch flattened)."""
    p = torch.sigmoid(logits).flatten()
    y = target.float().flatten()
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    dice = (2 * (p * y).sum() + smooth) / (p.sum() + y.sum() + smooth)
    return 0.5 * bce + 0.5 * (1 - dice)


def test_binary_loss_known_values_zero_logits() -> None:
    # p = 0.5 everywhere; 3 foreground pixels out of 8 over the batch:
    # BCE = ln 2; Dice = (2 * 0.5 * 3) / (0.5 * 8 + 3) = 3 / 7.
    logits = torch.zeros(2, 1, 2, 2)
    target = torch.tensor([[[[1, 1], [0, 0]]], [[[1, 0], [0, 0]]]])
    expected = 0.5 * math.log(2) + 0.5 * (1 - 3 / 7)
    assert SegmentationLoss(1)(logits, target).item() == pytest.approx(expected, abs=1e-6)


def test_binary_loss_matches_hand_formula_with_batch_pooled_dice() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 8, 8, generator=generator, dtype=torch.float64) * 3
    target = torch.zeros(3, 1, 8, 8, dtype=torch.int64)
    target[0, 0, 2:6, 2:6] = 1
    target[1, 0, 0:2, :] = 1  # the third image has no foreground: a per-image Dice differs
    loss = SegmentationLoss(1)(logits, target)
    assert loss.item() == pytest.approx(keras_style_loss(logits, target).item(), abs=1e-6)

    per_image_dice = torch.stack(
        [
            (2 * (torch.sigmoid(logits[i]) * target[i]).sum() + 1e-6)
            / (torch.sigmoid(logits[i]).sum() + target[i].sum() + 1e-6)
            for i in range(3)
        ]
    ).mean()
    bce = F.binary_cross_entropy_with_logits(logits, target.float())
    per_image_loss = 0.5 * bce + 0.5 * (1 - per_image_dice)
    assert abs(loss.item() - per_image_loss.item()) > 1e-3  # pooled over the batch, not per image


def test_binary_perfect_prediction_is_near_zero() -> None:
    target = torch.zeros(2, 1, 16, 16, dtype=torch.int64)
    target[:, :, 4:12, 4:12] = 1
    logits = (target.float() * 2 - 1) * 30  # sigmoid saturates at the right class
    dice_only = SegmentationLoss(1, bce_weight=0.0, dice_weight=1.0)(logits, target)
    assert dice_only.item() == pytest.approx(0.0, abs=1e-6)
    assert SegmentationLoss(1)(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_weights_combine_linearly() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 8, 8, generator=generator)
    target = (torch.rand(2, 1, 8, 8, generator=generator) > 0.5).long()
    bce = SegmentationLoss(1, bce_weight=1.0, dice_weight=0.0)(logits, target)
    dice = SegmentationLoss(1, bce_weight=0.0, dice_weight=1.0)(logits, target)
    combined = SegmentationLoss(1, bce_weight=0.3, dice_weight=0.7)(logits, target)
    assert bce.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, target.float()).item(), abs=1e-6)
    assert combined.item() == pytest.approx(0.3 * bce.item() + 0.7 * dice.item(), abs=1e-6)


def test_multiclass_loss_matches_hand_formula() -> None:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 8, 8, generator=generator)
    target = torch.randint(0, 3, (2, 1, 8, 8), generator=generator)
    loss = SegmentationLoss(3)(logits, target)

    probabilities = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target[:, 0], 3).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)  # each class pooled over the batch, then averaged over classes
    dice = (
        (2 * (probabilities * onehot).sum(dims) + 1e-6) / (probabilities.sum(dims) + onehot.sum(dims) + 1e-6)
    ).mean()
    expected = 0.5 * F.cross_entropy(logits, target[:, 0]) + 0.5 * (1 - dice)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_multiclass_perfect_prediction_is_near_zero_and_target_without_channel() -> None:
    target = torch.zeros(2, 16, 16, dtype=torch.int64)
    target[:, 2:8, 2:8] = 1
    target[:, 10:14, 10:14] = 2
    logits = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 40
    assert SegmentationLoss(3)(logits, target).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("out_channels", [1, 3])
def test_gradient_flows(out_channels: int, device: str) -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, out_channels, 8, 8, generator=generator).to(device).requires_grad_()
    target = torch.randint(0, max(out_channels, 2), (2, 1, 8, 8), generator=generator).to(device)
    loss = SegmentationLoss(out_channels)(logits, target)
    loss.backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_segmentation_loss_rejects_bad_arguments_and_shapes() -> None:
    with pytest.raises(ValueError, match="out_channels"):
        SegmentationLoss(0)
    with pytest.raises(ValueError, match="weights"):
        SegmentationLoss(1, bce_weight=-1.0)
    loss = SegmentationLoss(1)
    with pytest.raises(ValueError, match="expected logits"):
        loss(torch.zeros(2, 2, 4, 4), torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="expected target"):
        loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))


def test_consistency_loss_known_values() -> None:
    a = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]]])
    b = torch.tensor([[[[1.0, 1.0], [0.0, 0.5]]]])
    # squared differences 1, 0, 0.25, 0 -> mean 0.3125
    assert ConsistencyLoss()(a, b).item() == pytest.approx(0.3125)
    assert ConsistencyLoss(weight=2.0)(a, b).item() == pytest.approx(0.625)
    assert ConsistencyLoss(weight=0.0)(a, b).item() == 0.0
    assert ConsistencyLoss()(a, a).item() == 0.0


def test_consistency_loss_on_logits_and_gradients() -> None:
    logits_a = torch.zeros(1, 1, 2, 2, requires_grad=True)  # sigmoid -> 0.5
    logits_b = torch.full((1, 1, 2, 2), 100.0, requires_grad=True)  # sigmoid -> 1
    loss = ConsistencyLoss(weight=1.0, activation="sigmoid")(logits_a, logits_b)
    assert loss.item() == pytest.approx(0.25)
    loss.backward()
    assert logits_a.grad is not None and logits_a.grad.abs().sum() > 0
    assert logits_b.grad is not None  # both views receive gradients (none here: sigmoid is saturated)

    softmax_loss = ConsistencyLoss(activation="softmax")(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2))
    assert softmax_loss.item() == 0.0


def test_consistency_loss_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="weight"):
        ConsistencyLoss(weight=-0.1)
    with pytest.raises(ValueError, match="activation"):
        ConsistencyLoss(activation="relu")
    with pytest.raises(ValueError, match="aligned"):
        ConsistencyLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
