"""The method's numbers: one typed place that the settings, the filter and the command line read."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sscase_monai.method import (
    BATCH_SIZE,
    DEFAULT_STAGES,
    PSEUDO_LABELS,
    SAMPLES_PER_IMAGE,
    TTA_VIEWS,
    PseudoLabelConfig,
    short_number,
    stage_values,
)


def test_the_papers_numbers():
    assert [(s.epochs, s.lr, s.patience, s.lr_patience, s.min_lr) for s in DEFAULT_STAGES] == [
        (20, 1e-4, 7, 2, 1e-7),
        (50, 1e-5, 15, 3, 1e-8),
        (30, 5e-6, 20, 5, 1e-9),
    ]
    method_filter = (PSEUDO_LABELS.threshold, PSEUDO_LABELS.confidence, PSEUDO_LABELS.min_confident_fraction)
    assert method_filter == (0.5, 0.95, 0.9)
    assert (PSEUDO_LABELS.min_foreground_pixels, PSEUDO_LABELS.tta) == (10, False)
    assert TTA_VIEWS == ("identity", "hflip", "vflip", "rot90", "rot270")
    assert (BATCH_SIZE, SAMPLES_PER_IMAGE) == (8, 32)


def test_help_text_formatting_parses_back():
    assert stage_values("epochs") == "20,50,30"
    assert stage_values("lr") == "1e-4,1e-5,5e-6"
    assert stage_values("patience") == "7,15,20"
    for value in (0, 20, 0.95, 0.01, 1e-4, 5e-6, 2.5e-7, 3e-4):
        assert float(short_number(value)) == value
    text = PSEUDO_LABELS.describe()
    assert text == "more than 90% of pixels confident (p >= 0.95 or <= 0.05) and at least 10 foreground pixels"
    assert "(p >= 0.99 or <= 0.01)" in PseudoLabelConfig(confidence=0.99).describe()


def test_readers_follow_the_constants():
    from sscase_monai.cli import build_parser
    from sscase_monai.inference import Prediction
    from sscase_monai.pseudo_label_selection import select_confident_pseudo_labels
    from sscase_monai.training import TrainingConfig

    config = TrainingConfig()
    assert (config.stages, config.pseudo_labels) == (DEFAULT_STAGES, PSEUDO_LABELS)
    assert (config.batch_size, config.samples_per_image) == (BATCH_SIZE, SAMPLES_PER_IMAGE)
    assert Prediction.confidence.__defaults__ == (PSEUDO_LABELS.confidence,)
    assert select_confident_pseudo_labels.__defaults__ == (
        PSEUDO_LABELS.threshold,
        PSEUDO_LABELS.confidence,
        PSEUDO_LABELS.min_confident_fraction,
        PSEUDO_LABELS.min_foreground_pixels,
    )
    args = build_parser().parse_args(["train", "--images", "i", "--labels", "l", "--out", "o"])
    assert (args.pseudo_confidence, args.pseudo_min_fraction, args.pseudo_min_pixels) == (0.95, 0.9, 10)
    assert (args.batch_size, args.samples_per_image) == (BATCH_SIZE, SAMPLES_PER_IMAGE)


def test_pseudo_label_config_refuses_out_of_range_values():
    with pytest.raises(ValueError, match="confidence must be in"):
        PseudoLabelConfig(confidence=0.4)
    with pytest.raises(ValueError, match="min_foreground_pixels"):
        PseudoLabelConfig(min_foreground_pixels=-1)


def test_the_command_lines_help_reads_the_constants_without_torch():
    code = "import sys; from sscase_monai.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
