"""Tests for sscase_monai.pseudo_label_selection: the confident-selection rule at its boundaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sscase_monai.pseudo_label_selection import PseudoLabelCandidate, select_confident_pseudo_labels

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def binary_map(height: int, width: int, foreground: int = 0, unsure: int = 0) -> torch.Tensor:
    """``(1, H, W)`` probabilities: ``foreground`` pixels at 1.0, then ``unsure`` pixels at 0.6, the rest 0.0."""
    flat = torch.zeros(height * width)
    flat[:foreground] = 1.0
    flat[foreground : foreground + unsure] = 0.6
    return flat.reshape(1, height, width)


def select_one(probability: torch.Tensor, **kwargs) -> PseudoLabelCandidate:
    (candidate,) = select_confident_pseudo_labels(probability[None], **kwargs)
    return candidate


def test_all_confident_but_empty_mask_is_rejected() -> None:
    candidate = select_one(binary_map(16, 16))
    assert candidate.confident_fraction == 1.0
    assert candidate.foreground_pixels == 0
    assert not candidate.accepted


def test_foreground_boundary_nine_rejected_ten_kept() -> None:
    nine = select_one(binary_map(16, 16, foreground=9))
    ten = select_one(binary_map(16, 16, foreground=10))
    assert nine.foreground_pixels == 9 and not nine.accepted
    assert ten.foreground_pixels == 10 and ten.accepted
    assert ten.mask.shape == (1, 16, 16) and ten.mask.dtype == torch.int64
    assert int(ten.mask.sum()) == 10


def test_confidence_boundary_exactly_ninety_percent_rejected() -> None:
    exactly = select_one(binary_map(10, 10, foreground=20, unsure=10))  # 90 of 100 confident
    assert exactly.confident_fraction == pytest.approx(0.9)
    assert not exactly.accepted
    above = select_one(binary_map(20, 50, foreground=20, unsure=99))  # 901 of 1000 confident
    assert above.confident_fraction == pytest.approx(0.901)
    assert above.accepted


def test_pixel_confidence_boundaries_are_inclusive() -> None:
    probability = torch.zeros(1, 10, 10)
    probability[0, 0, :] = 0.95  # confident foreground (>= 0.95)
    probability[0, 1, :] = 0.05  # confident background (<= 0.05)
    probability[0, 2, :] = 0.94  # not confident
    probability[0, 3, :] = 0.5  # exactly the threshold: background, not confident
    candidate = select_one(probability)
    assert candidate.confident_fraction == pytest.approx(0.8)
    assert candidate.foreground_pixels == 20  # rows 0 and 2 (p > 0.5)
    assert candidate.mask[0, 3].sum() == 0


def test_thresholds_are_configurable() -> None:
    probability = binary_map(10, 10, foreground=5, unsure=20)  # 80% confident, 5 foreground at 1.0 + 20 at 0.6
    assert not select_one(probability).accepted
    assert select_one(probability, min_confident_fraction=0.75, min_foreground_pixels=5).accepted
    lenient = select_one(probability, confidence=0.6)  # 0.6 >= 0.6: every pixel confident
    assert lenient.confident_fraction == 1.0 and lenient.accepted
    strict_threshold = select_one(probability, threshold=0.7)  # the 0.6 pixels become background
    assert strict_threshold.foreground_pixels == 5


def test_multiclass_rule() -> None:
    probabilities = torch.zeros(2, 3, 10, 10)
    probabilities[:, 0] = 1.0
    # image 0: 12 pixels of class 2 at 0.97, 5 pixels of class 1 at 0.5 (unsure: max 0.5)
    probabilities[0, :, 0, :10] = torch.tensor([0.01, 0.02, 0.97])[:, None]
    probabilities[0, :, 1, :2] = torch.tensor([0.01, 0.02, 0.97])[:, None]
    probabilities[0, :, 2, :5] = torch.tensor([0.3, 0.5, 0.2])[:, None]
    # image 1: every pixel background but only at 0.9 -> nothing confident, no foreground
    probabilities[1, 0] = 0.9
    probabilities[1, 1] = 0.1
    first, second = select_confident_pseudo_labels(probabilities)
    assert first.foreground_pixels == 17  # argmax != 0: 12 of class 2, 5 of class 1
    assert first.confident_fraction == pytest.approx(0.95)
    assert first.accepted
    assert int((first.mask == 2).sum()) == 12 and int((first.mask == 1).sum()) == 5
    assert second.confident_fraction == 0.0 and second.foreground_pixels == 0 and not second.accepted


def test_numpy_and_lists_of_different_sizes() -> None:
    maps = [binary_map(16, 16, foreground=10).numpy(), binary_map(8, 12, foreground=3)]
    kept, dropped = select_confident_pseudo_labels(maps)
    assert (kept.index, kept.accepted, kept.mask.shape) == (0, True, (1, 16, 16))
    assert (dropped.index, dropped.accepted, dropped.mask.shape) == (1, False, (1, 8, 12))
    batch = np.stack([binary_map(8, 8, foreground=12).numpy()] * 3)
    assert [c.accepted for c in select_confident_pseudo_labels(batch)] == [True] * 3


@pytest.mark.parametrize("device", DEVICES)
def test_mask_stays_on_the_input_device(device: str) -> None:
    candidate = select_one(binary_map(16, 16, foreground=12).to(device))
    assert candidate.mask.device.type == device
    assert candidate.accepted


def test_rejects_bad_arguments() -> None:
    probabilities = binary_map(4, 4)[None]
    with pytest.raises(ValueError, match="confidence"):
        select_confident_pseudo_labels(probabilities, confidence=0.4)
    with pytest.raises(ValueError, match="threshold"):
        select_confident_pseudo_labels(probabilities, threshold=1.0)
    with pytest.raises(ValueError, match="min_confident_fraction"):
        select_confident_pseudo_labels(probabilities, min_confident_fraction=1.5)
    with pytest.raises(ValueError, match="min_foreground_pixels"):
        select_confident_pseudo_labels(probabilities, min_foreground_pixels=-1)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        select_confident_pseudo_labels(probabilities[0])
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        select_confident_pseudo_labels([torch.zeros(4, 4)])
