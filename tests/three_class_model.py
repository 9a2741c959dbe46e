"""A small 3-class SS_CASE_UNet for tests that need a multi-class model without training one.

ImageNet encoder (real image features), seeded random decoder, and an output layer standardised on one image so
that each class's logit map has mean 0 and unit variance there: the argmax then gives every class a share of the
image (an untrained head would give one class nearly everywhere). The masks mean nothing anatomically; tests
compare them between code paths (library, server, exported graphs, Slicer), which must agree exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from monai.transforms import Compose

from sscase_monai.model_files import ModelSpec, save_model
from sscase_monai.transforms import build_preprocess

PSFHS_LABELS: dict[str, int] = {"pubic_symphysis": 1, "fetal_head": 2}


def three_class_model(path: str | Path, image: str | Path, input_size: int = 64, seed: int = 0) -> Path:
    """Save the model (``path`` + its ``.json`` sidecar) with its output layer standardised on ``image``."""
    torch.manual_seed(seed)
    spec = ModelSpec.for_labels(PSFHS_LABELS, input_size=input_size)
    network = spec.build_network(pretrained=True).eval()
    preprocess = Compose(build_preprocess(input_size, spec.in_channels, spec.num_classes, keys=("image",)))
    with torch.no_grad():
        logits = network(preprocess({"image": str(image)})["image"].as_tensor()[None])[0]
        mean, std = logits.mean(dim=(1, 2)), logits.std(dim=(1, 2))
        output = network.head.output
        output.weight /= std[:, None, None, None]
        output.bias.copy_((output.bias - mean) / std)
    return save_model(path, network, spec)
