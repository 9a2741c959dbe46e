"""Tests for sscase_monai.tta: view construction, inversion, batching and disagreement."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from sscase_monai.method import TTA_VIEWS
from sscase_monai.tta import resolve_tta_transforms, tta_disagreement, tta_predict, tta_views

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class CountingPredictor:
    """Returns its input (or a given function of it) and records every batch it sees."""

    def __init__(self, function=lambda x: x) -> None:
        self.function = function
        self.batches: list[torch.Tensor] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.batches.append(batch.clone())
        return self.function(batch)


def asymmetric_images(batch: int = 2, channels: int = 1, size: int = 6, device: str = "cpu") -> torch.Tensor:
    return torch.arange(batch * channels * size * size, dtype=torch.float32, device=device).reshape(
        batch, channels, size, size
    ) / (batch * channels * size * size)


def test_views_seen_by_the_predictor_are_the_named_transforms() -> None:
    image = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    predictor = CountingPredictor()
    tta_views(predictor, image, activation="none")
    assert len(predictor.batches) == 1
    seen = predictor.batches[0][:, 0]
    expected = torch.tensor(
        [
            [[1.0, 2.0], [3.0, 4.0]],  # identity
            [[2.0, 1.0], [4.0, 3.0]],  # horizontal flip (mirror left-right)
            [[3.0, 4.0], [1.0, 2.0]],  # vertical flip (mirror top-bottom)
            [[2.0, 4.0], [1.0, 3.0]],  # rot90: a quarter turn counter-clockwise
            [[3.0, 1.0], [4.0, 2.0]],  # rot270: a quarter turn clockwise
        ]
    )
    assert torch.equal(seen, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_every_aligned_view_of_the_identity_predictor_is_the_input(device: str) -> None:
    images = asymmetric_images(device=device)
    views = tta_views(lambda x: x, images, activation="none")
    assert views.shape == (2, len(TTA_VIEWS), 1, 6, 6)
    for v in range(len(TTA_VIEWS)):
        assert torch.equal(views[:, v], images), TTA_VIEWS[v]


def test_non_equivariant_predictor_aligns_view_by_view() -> None:
    # The predictor adds a column ramp in the *view's* frame, so each aligned view carries the ramp transformed back.
    ramp = torch.arange(4, dtype=torch.float32).expand(4, 4)  # ramp[r, c] = c
    images = torch.zeros(1, 1, 4, 4)
    views = tta_views(lambda x: x + ramp, images, activation="none")[0, :, 0]
    assert torch.equal(views[0], ramp)  # identity
    assert torch.equal(views[1], 3 - ramp)  # h-flip: the ramp runs right to left
    assert torch.equal(views[2], ramp)  # v-flip: columns untouched
    assert torch.equal(views[3], ramp.T)  # rot90 undone by a clockwise turn: the ramp now runs down the rows
    assert torch.equal(views[4], 3 - ramp.T)  # rot270 undone by a counter-clockwise turn: runs up the rows


@pytest.mark.parametrize("device", DEVICES)
def test_tta_of_a_pixelwise_function_equals_the_function(device: str) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(3, 1, 8, 8, generator=generator).to(device)
    probabilities = tta_predict(lambda x: x * 2, images, activation="sigmoid")
    assert probabilities.device.type == device
    torch.testing.assert_close(probabilities, torch.sigmoid(images * 2))
    assert torch.allclose(tta_disagreement(tta_views(lambda x: x * 2, images)), torch.zeros(3, device=device))


def test_softmax_and_auto_activation() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 8, 8, generator=generator)
    probabilities = tta_predict(lambda x: x, logits)  # auto: 3 channels -> softmax
    torch.testing.assert_close(probabilities, torch.softmax(logits, dim=1))
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(2, 8, 8))


def test_all_views_in_one_forward_pass_or_in_chunks() -> None:
    images = asymmetric_images(batch=2)
    predictor = CountingPredictor()
    tta_predict(predictor, images, activation="none")
    assert len(predictor.batches) == 1
    assert predictor.batches[0].shape[0] == 2 * len(TTA_VIEWS)

    chunked = CountingPredictor()
    views = tta_views(chunked, images, activation="none", max_batch_size=3)
    assert [b.shape[0] for b in chunked.batches] == [3, 3, 3, 1]
    for v in range(len(TTA_VIEWS)):
        assert torch.equal(views[:, v], images)


def test_non_square_input_skips_rotations_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    images = torch.rand(1, 1, 4, 6)
    with caplog.at_level(logging.WARNING, logger="sscase_monai.tta"):
        views = tta_views(lambda x: x, images, activation="none")
    assert views.shape == (1, 3, 1, 4, 6)
    assert "not square" in caplog.text
    assert resolve_tta_transforms(TTA_VIEWS, 4, 6) == ("identity", "hflip", "vflip")
    assert resolve_tta_transforms(("hflip",), 4, 6) == ("hflip",)
    with pytest.raises(ValueError, match="no TTA transform left"):
        resolve_tta_transforms(("rot90",), 4, 6)


def test_works_with_a_network_and_tracks_no_gradients() -> None:
    torch.manual_seed(0)
    network = nn.Conv2d(3, 1, kernel_size=3, padding=1).eval()
    probabilities = tta_predict(network, torch.rand(2, 3, 16, 16))
    assert probabilities.shape == (2, 1, 16, 16)
    assert not probabilities.requires_grad
    assert ((probabilities >= 0) & (probabilities <= 1)).all()


def test_disagreement_known_values() -> None:
    views = torch.zeros(2, 2, 1, 2, 2)
    views[0, 1] = 1.0  # image 0: the two views say 0 and 1 everywhere -> variance 0.25
    views[1, :, :, 0, 0] = 1.0  # image 1: the views agree -> 0
    torch.testing.assert_close(tta_disagreement(views), torch.tensor([0.25, 0.0]))
    half = torch.zeros(1, 2, 1, 2, 2)
    half[0, 1, 0, 0, :] = 1.0  # disagreement on half of the pixels
    torch.testing.assert_close(tta_disagreement(half), torch.tensor([0.125]))


def test_rejects_bad_arguments() -> None:
    images = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="unknown TTA transform"):
        tta_views(lambda x: x, images, transforms=("identity", "transpose"))
    with pytest.raises(ValueError, match="repeat"):
        tta_views(lambda x: x, images, transforms=("hflip", "hflip"))
    with pytest.raises(ValueError, match="activation"):
        tta_views(lambda x: x, images, activation="relu")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        tta_views(lambda x: x, images[0])
    with pytest.raises(ValueError, match="predictor returned"):
        tta_views(lambda x: x[:1], images)
    with pytest.raises(ValueError, match="max_batch_size"):
        tta_views(lambda x: x, images, max_batch_size=0)
    with pytest.raises(ValueError, match="views"):
        tta_disagreement(torch.zeros(2, 2))
