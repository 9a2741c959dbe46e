"""A trained model as a MONAI bundle: the folder layout ``python -m monai.bundle run`` and MONAI's tools expect.

::

    BUNDLE/
      configs/metadata.json    MONAI's bundle metadata (schema 20240725): versions, task, network_data_format with
                               the input/output spec and the label names (channel_def), required packages
      configs/inference.json   the inference workflow: this package's own preprocessing, network and restoration
                               (``_target_`` classes of ``sscase_monai``), a MONAI ``SupervisedEvaluator``
      configs/logging.conf     log to stdout (``monai.bundle run`` reads it)
      models/model.pt          the network's float32 state dict (+ models/model.json, the sscase-monai sidecar, so
                               ``sscase-monai predict --model BUNDLE/models/model.pt`` works too)
      docs/README.md           how to run it

Run it on a folder of images (PNG, JPEG, NIfTI, NRRD, DICOM; one 2-D image each)::

    python -m monai.bundle run --config_file BUNDLE/configs/inference.json --meta_file BUNDLE/configs/metadata.json \\
        --bundle_root BUNDLE --dataset_dir scans/ --output_dir masks/

Each mask has the input's name, format and geometry (``uint8``, the label values of ``metadata.json``). The bundle
needs ``sscase-monai`` installed (``required_packages_version``): its preprocessing (5x5 median, resize, gray to RGB)
and the restoration to each image's grid are the library's, so a bundle predicts exactly what
``sscase-monai predict`` and the MONAI Label app predict, instead of an approximation in MONAI-only transforms.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch
from monai.bundle import ConfigParser
from torch import nn

from sscase_monai import __version__
from sscase_monai.model_files import (
    ARCHITECTURE_TITLES,
    ModelSpec,
    atomic_write_bytes,
    load_model,
    read_sidecar,
    save_model,
)
from sscase_monai.transforms import format_input_size

logger = logging.getLogger(__name__)

METADATA_SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)
"""The MONAI bundle metadata schema ``metadata.json`` follows."""

METADATA_FILE = "configs/metadata.json"
INFERENCE_FILE = "configs/inference.json"
MODEL_FILE = "models/model.pt"
README_FILE = "docs/README.md"
LOGGING_FILE = "configs/logging.conf"

LOGGING_CONFIG = """[loggers]
keys=root

[handlers]
keys=console

[formatters]
keys=plain

[logger_root]
level=INFO
handlers=console

[handler_console]
class=StreamHandler
level=INFO
formatter=plain
args=(sys.stdout,)

[formatter_plain]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""
"""``configs/logging.conf``, which ``monai.bundle run`` loads by default: INFO (each mask written) to stdout."""

REQUIRED_PACKAGES: tuple[str, ...] = ("sscase-monai", "pytorch-ignite", "SimpleITK")
"""Packages the inference workflow needs besides MONAI (``required_packages_version``)."""

PAPER = (
    "Vatanparast, Fateh, Mashayekhi (2025). SS_CASE_UNet: semi-supervised attention U-Net for fetal cerebellum "
    "segmentation in 2-D ultrasound."
)


def network_definition(spec: ModelSpec) -> dict[str, Any]:
    """The bundle's ``network_def``: the network of ``spec`` as a ``_target_`` config (no pretrained weights).

    Instantiated, it has the state-dict layout of :meth:`ModelSpec.build_network` (a test checks every
    architecture), so ``models/model.pt`` loads into it strictly.
    """
    if spec.architecture == "sscase_unet":
        return {
            "_target_": "sscase_monai.networks.SSCASEUNet",
            "in_channels": spec.in_channels,
            "out_channels": spec.out_channels,
            "encoder": spec.encoder,
            "dropout": spec.dropout,
        }
    if spec.architecture == "basic_unet":
        return {
            "_target_": "monai.networks.nets.BasicUNet",
            "spatial_dims": 2,
            "in_channels": spec.in_channels,
            "out_channels": spec.out_channels,
        }
    return {
        "_target_": "monai.networks.nets.FlexibleUNet",
        "in_channels": spec.in_channels,
        "out_channels": spec.out_channels,
        "backbone": spec.encoder,
        "pretrained": False,
        "spatial_dims": 2,
    }


def inference_config(spec: ModelSpec) -> dict[str, Any]:
    """``configs/inference.json``: images of ``dataset_dir`` -> masks in ``output_dir``.

    Overridable from the command line (``--key value``): ``bundle_root``, ``dataset_dir``, ``output_dir``,
    ``output_ext`` (e.g. ``.nrrd``; default: each input's own format), ``tta`` (the method's test-time
    augmentation), ``device``.
    """
    preprocess = (
        "$build_preprocess(input_size=@input_size, channels=@in_channels, "
        "num_classes=@num_classes, denoise=@denoise, keys=('image',))"
    )
    return {
        "imports": [
            "$from sscase_monai.data import find_images",
            "$from sscase_monai.transforms import build_preprocess",
        ],
        "bundle_root": ".",
        "model_path": "$@bundle_root + '/models/model.pt'",
        "dataset_dir": "/workspace/data",
        "output_dir": "$@bundle_root + '/eval'",
        "output_ext": None,
        "tta": False,
        "input_size": list(spec.input_shape),
        "in_channels": spec.in_channels,
        "num_classes": spec.num_classes,
        "denoise": spec.denoise,
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_definition(spec),
        "network": "$@network_def.to(@device)",
        "datalist": "$[{'image': str(p)} for p in find_images(@dataset_dir)]",
        "preprocessing": {"_target_": "Compose", "transforms": preprocess},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": {"_target_": "sscase_monai.inference.ProbabilityInferer", "tta": "@tta"},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {
                    "_target_": "sscase_monai.inference.RestoreToOriginald",
                    "keys": "pred",
                    "ref_image": "image",
                    "probabilities_key": None,
                },
                {
                    "_target_": "sscase_monai.inference.SaveMaskd",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "ref_image": "image",
                    "output_ext": "@output_ext",
                },
            ],
        },
        "handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": "@model_path",
                "load_dict": {"model": "@network"},
                "map_location": "@device",
            },
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,
        },
        "run": ["$@evaluator.run()"],
    }


def _package_versions() -> dict[str, str]:
    versions = {}
    for name in REQUIRED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = __version__ if name == "sscase-monai" else "unknown"
    return versions


def _channel_names(spec: ModelSpec) -> dict[str, str]:
    names = {value: name for name, value in spec.labels.items()}
    if spec.out_channels == 1:
        return {"0": names[1]}
    return {"0": "background", **{str(c): names[c] for c in range(1, spec.out_channels)}}


def bundle_metadata(spec: ModelSpec, sidecar: dict[str, Any], version: str = "0.1.0") -> dict[str, Any]:
    """``configs/metadata.json`` in MONAI's bundle metadata schema (:data:`METADATA_SCHEMA`)."""
    labels = ", ".join(f"{value} = {name}" for name, value in sorted(spec.labels.items(), key=lambda kv: kv[1]))
    title = ARCHITECTURE_TITLES[spec.architecture]
    binary = spec.out_channels == 1
    label_values = {"0": "background", **{str(v): name for name, v in spec.labels.items()}}
    metrics = sidecar.get("training", {}).get("validation_metrics", {})
    eval_metrics = {f"val_{k}_{a}": metrics[a][k] for a in ("mean", "pooled") for k in ("dice",) if a in metrics}
    size = list(spec.input_shape)
    size_text = format_input_size(spec.input_size)
    return {
        "schema": METADATA_SCHEMA,
        "version": version,
        "changelog": {version: f"exported by sscase-monai {__version__}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": _package_versions(),
        "name": f"{title} 2-D ultrasound segmentation",
        "task": f"2-D ultrasound segmentation of {', '.join(spec.labels)}",
        "description": (
            f"{title} ({spec.encoder if spec.architecture != 'basic_unet' else 'scratch'}) trained with sscase-monai, "
            f"input {size_text}, label values {labels}. configs/inference.json segments every "
            "image of dataset_dir with the library's own preprocessing and writes each mask on its image's grid to "
            "output_dir."
        ),
        "authors": "sscase-monai",
        "copyright": "Copyright (c) the sscase-monai authors",
        "data_type": "2-D images: png, jpeg, nifti or nrrd (one slice), dicom",
        "image_classes": (
            f"{spec.in_channels}-channel image in [0, 1]: gray ultrasound replicated to RGB, resized to "
            f"{size_text}" + (", 5x5 median-denoised" if spec.denoise else "")
        ),
        "label_classes": f"single channel label values: {{0 = background, {labels}}}",
        "pred_classes": (
            f"1 channel: logit of {next(iter(spec.labels))} (mask = sigmoid > 0.5)"
            if binary
            else f"{spec.out_channels} channels of softmax logits, channel c = label value c (mask = argmax)"
        ),
        "eval_metrics": eval_metrics,
        "intended_use": "Research; not for clinical diagnosis.",
        "references": [PAPER],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "US",
                    "num_channels": spec.in_channels,
                    "spatial_shape": size,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {str(c): "gray" for c in range(spec.in_channels)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "logits",
                    "num_channels": spec.out_channels,
                    "spatial_shape": size,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": False,
                    "channel_def": _channel_names(spec),
                }
            },
            "post_processed_outputs": {
                "pred": {
                    "type": "image",
                    "format": "labels",
                    "num_channels": 1,
                    "spatial_shape": ["H", "W"],
                    "dtype": "uint8",
                    "value_range": [0, max(spec.labels.values())],
                    "is_patch_data": False,
                    "channel_def": label_values,
                }
            },
        },
        "sscase_monai": {
            "spec": spec.to_dict(),
            **({"training": sidecar["training"]} if "training" in sidecar else {}),
        },
    }


def _readme(spec: ModelSpec) -> str:
    return f"""# {ARCHITECTURE_TITLES[spec.architecture]} 2-D ultrasound segmentation (MONAI bundle)

Exported by sscase-monai {__version__}. Labels: {json.dumps(spec.labels)} (0 = background).

Needs `pip install sscase-monai` (its transforms and network are the bundle's `_target_`s; versions in
`configs/metadata.json`). Segment every image of a folder (PNG, JPEG, NIfTI, NRRD, DICOM; one 2-D image each):

```bash
python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \\
    --bundle_root . --dataset_dir /path/to/scans --output_dir /path/to/masks
```

Options: `--output_ext .nrrd` (default: each input's own format), `--tta true` (the method's test-time
augmentation), `--device "\\$torch.device('cpu')"`. Masks are `uint8` with each input's size, spacing, origin and
direction.

`models/model.pt` is the network's state dict; with `models/model.json` beside it, it is also a model file of
`sscase-monai predict|evaluate --model`.
"""


def write_bundle(model_path: str | os.PathLike, out_dir: str | os.PathLike, version: str = "0.1.0") -> Path:
    """Write a saved model as a MONAI bundle folder (see the module doc).

    Args:
        model_path: ``model.pt`` with its ``model.json`` sidecar.
        out_dir: the bundle folder (created; existing bundle files are replaced).
        version: the bundle's version in ``metadata.json``.

    Returns:
        ``out_dir``.
    """
    out = Path(out_dir)
    network, spec = load_model(model_path, device="cpu")
    sidecar = read_sidecar(model_path)
    extra = {k: v for k, v in sidecar.items() if k not in ("format", "spec", "half")}
    save_model(out / MODEL_FILE, network, spec, extra=extra)
    for name, content in (
        (METADATA_FILE, json.dumps(bundle_metadata(spec, sidecar, version), indent=4)),
        (INFERENCE_FILE, json.dumps(inference_config(spec), indent=4)),
        (LOGGING_FILE, LOGGING_CONFIG),
        (README_FILE, _readme(spec)),
    ):
        atomic_write_bytes(out / name, lambda f, text=content: f.write(text.encode()))
    logger.info("wrote MONAI bundle %s (%s, labels %s)", out, spec.architecture, spec.labels)
    return out


def bundle_network(bundle_dir: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The network a bundle's ``inference.json`` builds, with ``models/model.pt`` loaded strictly, in eval mode."""
    bundle = Path(bundle_dir)
    parser = ConfigParser()
    parser.read_config(bundle / INFERENCE_FILE)
    parser["bundle_root"] = str(bundle)
    network = parser.get_parsed_content("network_def", instantiate=True)
    state = torch.load(bundle / MODEL_FILE, map_location="cpu", weights_only=True)
    network.load_state_dict(state, strict=True)
    return network.to(device).eval()
