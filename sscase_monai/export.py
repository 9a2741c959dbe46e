"""Trained models as standalone graphs: ONNX (for ONNX Runtime, TensorRT, scanner-side runtimes) and TorchScript.

Both graphs hold the network exactly as :class:`~sscase_monai.inference.Predictor` runs it
(:func:`~sscase_monai.inference.optimize_for_inference`: batch norm folded into the convolutions) followed by the
output activation, so they take what the network takes and return **probabilities**:

- input ``image``: ``(N, C, H, W)`` float32 in [0, 1] (C = ``spec.in_channels``, (H, W) = ``spec.input_shape``),
  i.e. the output of the model's preprocessing (:func:`sscase_monai.transforms.build_preprocess`: read, scale to
  [0, 1], gray to RGB, resize to H x W, 5x5 median if ``spec.denoise``); the batch axis is dynamic;
- output ``probabilities``: ``(N, K, H, W)`` float32: for a binary model K = 1, the foreground's sigmoid (mask =
  ``p > 0.5``); for K foreground classes K + 1 softmax channels, background first (mask = argmax, whose index is
  the label value).

Each file carries the model's sidecar (:mod:`sscase_monai.model_files`: labels, input size, preprocessing): in the
ONNX model's ``metadata_props`` under :data:`METADATA_KEY`, in the TorchScript archive as the extra file
:data:`TORCHSCRIPT_METADATA_FILE`. :func:`load_exported` reads either back; :func:`check_export` compares an exported
graph with PyTorch on real images.

TorchScript is what MONAI bundles (``model.ts``), MONAI Deploy and C++ ``libtorch`` load today; torch >= 2.10 marks
``torch.jit`` deprecated in favour of ``torch.export``, so its deprecation warnings are silenced here.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import optional_import
from torch import nn

from sscase_monai import __version__
from sscase_monai.data import find_images
from sscase_monai.inference import Predictor, optimize_for_inference
from sscase_monai.metrics import segmentation_metrics
from sscase_monai.model_files import ModelSpec, atomic_write_bytes, load_model, read_sidecar
from sscase_monai.paths import bundled_sample_data, existing_file
from sscase_monai.probabilities import class_indices, probabilities_from_logits

onnx, _ = optional_import("onnx")
ort, _ = optional_import("onnxruntime")

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("onnx", "torchscript", "bundle")
"""What ``sscase-monai export --format`` writes (the bundle is :mod:`sscase_monai.bundle`)."""

ONNX_OPSET = 18
"""ONNX opset of exported graphs: ONNX Runtime >= 1.14 and TensorRT >= 8.6 run it."""

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
METADATA_KEY = "sscase_monai"
"""Key of the model's sidecar (JSON) in an ONNX model's metadata."""
TORCHSCRIPT_METADATA_FILE = "sscase_monai.json"
"""Extra file holding the model's sidecar in a TorchScript archive."""

CHECK_DICE = 0.999
"""Least Dice between the exported graph's masks and PyTorch's for :meth:`ExportCheck.passed`."""
CHECK_MAX_ABS_DIFF = 1e-2
"""Largest probability difference :meth:`ExportCheck.passed` accepts: a guard against a wrong graph (which is off by
0.1 or more), not a rounding budget. Float32 rounding alone moved probabilities by up to 6e-4 on sample scans and
2e-3 on 16 HC18 scans (ONNX Runtime vs PyTorch; PyTorch channels-last vs NCHW: 1e-4), as the logits pass through
~100 layers; no mask pixel changed (``bench/RESULTS.md``)."""


class ProbabilityNetwork(nn.Module):
    """A segmentation network followed by its output activation: what the exported graphs compute.

    Args:
        network: returns logits ``(N, K, H, W)``.
        channels_last: convert the input to channels-last memory first (the network's weights are; see
            :func:`~sscase_monai.inference.optimize_for_inference`), so callers may pass ordinary NCHW tensors.
    """

    def __init__(self, network: nn.Module, channels_last: bool = False) -> None:
        super().__init__()
        self.network = network
        self.channels_last = channels_last

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(N, K, H, W)``: sigmoid for one channel, softmax over channels otherwise."""
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return probabilities_from_logits(self.network(image))


def export_metadata(model_path: str | os.PathLike, spec: ModelSpec, format: str) -> dict[str, Any]:
    """What an exported file says about itself: the model's sidecar plus the graph's input/output contract."""
    sidecar = read_sidecar(model_path)
    return {
        "format": f"sscase-monai/{format}",
        "exported_by": f"sscase-monai {__version__}",
        "source_model": Path(model_path).name,
        "spec": spec.to_dict(),
        "input": {
            "name": INPUT_NAME,
            "shape": ["N", spec.in_channels, *spec.input_shape],
            "dtype": "float32",
            "value_range": [0.0, 1.0],
            "preprocessing": "sscase_monai.transforms.build_preprocess"
            + (" (resize, 5x5 median denoise)" if spec.denoise else " (resize)"),
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["N", spec.out_channels, *spec.input_shape],
            "dtype": "float32",
            "activation": "sigmoid" if spec.out_channels == 1 else "softmax",
            "mask": "probabilities[0] > 0.5" if spec.out_channels == 1 else "argmax over channels",
            "labels": dict(spec.labels),
        },
        **({"training": sidecar["training"]} if "training" in sidecar else {}),
    }


def _uses_channels_last(network: nn.Module) -> bool:
    weights = [p for p in network.parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[-1] > 1]
    return bool(weights) and all(
        w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in weights
    )


def _exportable(model_path: str | os.PathLike, channels_last: bool | None) -> tuple[ProbabilityNetwork, ModelSpec]:
    """The saved network as the library runs it, with its activation; ``channels_last=None``: as it decides."""
    network, spec = load_model(model_path, device="cpu")
    optimized = optimize_for_inference(network, channels_last=channels_last, inplace=True)
    return ProbabilityNetwork(optimized, channels_last=_uses_channels_last(optimized)).eval(), spec


def _example_input(spec: ModelSpec, batch: int) -> torch.Tensor:
    return torch.rand(batch, spec.in_channels, *spec.input_shape, generator=torch.Generator().manual_seed(0))


def export_onnx(model_path: str | os.PathLike, out: str | os.PathLike, opset: int = ONNX_OPSET) -> Path:
    """Write a saved model as an ONNX graph with a dynamic batch axis (torch's ``torch.export``-based exporter).

    Args:
        model_path: ``model.pt`` with its ``model.json`` sidecar.
        out: the ``.onnx`` file (written atomically; weights inside the file).
        opset: ONNX opset version.

    Returns:
        ``out``.
    """
    model, spec = _exportable(model_path, channels_last=False)
    # batch 2: torch.export specialises a dimension whose example size is 1
    example = _example_input(spec, batch=2)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notes on torch internals
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"image": {0: batch}},
            opset_version=opset,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    metadata = export_metadata(model_path, spec, "onnx")
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(metadata), "labels": json.dumps(spec.labels)})
    proto.producer_name = "sscase-monai"
    proto.producer_version = __version__
    height, width = spec.input_shape
    proto.doc_string = (
        f"{spec.architecture} segmentation: {INPUT_NAME} (N, {spec.in_channels}, {height}, {width}) float32 in "
        f"[0, 1] -> {OUTPUT_NAME} (N, {spec.out_channels}, {height}, {width}); labels {spec.labels}"
    )
    onnx.checker.check_model(proto)
    path = atomic_write_bytes(out, lambda f: f.write(proto.SerializeToString()))
    logger.info("wrote ONNX opset %d graph %s (%.1f MB)", opset, path, path.stat().st_size / 1e6)
    return path


def export_torchscript(model_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write a saved model as a traced, frozen TorchScript module (``torch.jit.load`` runs it without this package).

    The trace keeps the batch axis dynamic; it is frozen (weights folded in as constants) for speed, and keeps the
    channels-last layout of :func:`~sscase_monai.inference.optimize_for_inference` for networks that profit from it.

    Args:
        model_path: ``model.pt`` with its ``model.json`` sidecar.
        out: the TorchScript file (``.pt`` or ``.ts``; written atomically).

    Returns:
        ``out``.
    """
    model, spec = _exportable(model_path, channels_last=None)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # input-shape checks are constant for a given S
        warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.10 calls TorchScript deprecated (module doc)
        traced = torch.jit.trace(model, _example_input(spec, batch=1))
        frozen = torch.jit.freeze(traced)
    extra = {TORCHSCRIPT_METADATA_FILE: json.dumps(export_metadata(model_path, spec, "torchscript"))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        path = atomic_write_bytes(out, lambda f: torch.jit.save(frozen, f, _extra_files=extra))
    logger.info("wrote TorchScript module %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


class OnnxModel:
    """An exported ONNX graph in an ONNX Runtime session (CPU unless other providers are given).

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime intra-op threads (default: torch's ``get_num_threads()``, so both use the same cores).
        providers: ONNX Runtime execution providers, in order of preference.

    Attributes:
        metadata: the exported file's metadata (see :func:`export_metadata`); ``spec``: its model settings.
    """

    def __init__(
        self, path: str | os.PathLike, threads: int | None = None, providers: Sequence[str] = ("CPUExecutionProvider",)
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.threads = options.intra_op_num_threads
        self.session = ort.InferenceSession(str(path), options, providers=list(providers))
        self.metadata = json.loads(self.session.get_modelmeta().custom_metadata_map[METADATA_KEY])
        self.spec = ModelSpec.from_dict(self.metadata["spec"])

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Probabilities ``(N, K, H, W)`` of preprocessed images ``(N, C, H, W)``."""
        array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(array, dtype=np.float32)})[0]


class TorchScriptModel:
    """An exported TorchScript module (CPU by default).

    Args:
        path: the TorchScript file.
        device: where to run it.

    Attributes:
        metadata: the exported file's metadata (see :func:`export_metadata`); ``spec``: its model settings.
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        extra = {TORCHSCRIPT_METADATA_FILE: ""}
        self.device = torch.device(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the deprecation note of TorchScript (module doc)
            self.module = torch.jit.load(str(path), map_location=self.device, _extra_files=extra)
        self.metadata = json.loads(extra[TORCHSCRIPT_METADATA_FILE])
        self.spec = ModelSpec.from_dict(self.metadata["spec"])

    @torch.inference_mode()
    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Probabilities ``(N, K, H, W)`` of preprocessed images ``(N, C, H, W)``."""
        tensor = torch.as_tensor(images, dtype=torch.float32).to(self.device)
        return self.module(tensor).float().cpu().numpy()


def load_exported(path: str | os.PathLike, threads: int | None = None) -> OnnxModel | TorchScriptModel:
    """An exported ``.onnx`` graph or TorchScript file, ready to call on preprocessed images.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a file that is not an export of this package.
    """
    path = existing_file(path, "exported model")
    try:
        if path.suffix.lower() == ".onnx":
            return OnnxModel(path, threads=threads)
        return TorchScriptModel(path)
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a model exported by sscase-monai (no {METADATA_KEY} metadata)") from e


@dataclass(frozen=True)
class ExportCheck:
    """How closely an exported graph reproduces PyTorch on the same preprocessed images.

    Attributes:
        images: how many images were compared.
        source: where they came from (a folder, or the bundled sample scans).
        max_abs_diff: the largest absolute difference of any probability.
        mean_abs_diff: the mean absolute difference of the probabilities.
        dice: Dice between the two masks at the network's size, pooled over the images (mean over foreground
            classes; 1 when both masks are empty).
        differing_pixels: pixels whose mask value differs.
        pixels: pixels compared.
    """

    images: int
    source: str
    max_abs_diff: float
    mean_abs_diff: float
    dice: float
    differing_pixels: int
    pixels: int

    def passed(self, min_dice: float = CHECK_DICE, max_abs_diff: float = CHECK_MAX_ABS_DIFF) -> bool:
        """Whether the masks agree to ``min_dice`` and no probability differs by more than ``max_abs_diff``."""
        return self.dice >= min_dice and self.max_abs_diff <= max_abs_diff

    def summary(self) -> str:
        """One line for a log or the CLI."""
        return (
            f"{self.images} image(s) from {self.source}: |p_exported - p_pytorch| max {self.max_abs_diff:.2e}, "
            f"mean {self.mean_abs_diff:.2e}; "
            f"mask Dice {self.dice:.6f}, {self.differing_pixels} of {self.pixels} pixels differ"
        )


SAMPLE_CHECK_IMAGES = 4
"""How many of the bundled sample scans (``sample-data/``, first by name) check an export when no images are given."""


def sample_inputs(count: int = SAMPLE_CHECK_IMAGES) -> list[Path]:
    """The first ``count`` bundled sample scans (``sample-data/``), for a check without data of one's own."""
    return find_images(bundled_sample_data())[:count]


def check_export(
    model_path: str | os.PathLike,
    exported: Callable[[np.ndarray], np.ndarray] | nn.Module,
    images: Sequence[str | os.PathLike | np.ndarray] | None = None,
    source: str | None = None,
    batch_size: int = 4,
) -> ExportCheck:
    """Compare an exported graph with the PyTorch model it came from, on the model's own preprocessing of images.

    The reference is :meth:`Predictor.predict_batch` of ``Predictor.from_file(model_path)`` (the optimised network
    the library and the server run, no test-time augmentation).

    Args:
        model_path: the saved model that was exported.
        exported: preprocessed images ``(N, C, H, W)`` -> probabilities: :func:`load_exported`'s result, or a
            network module returning probabilities (e.g. a :class:`ProbabilityNetwork`).
        images: image files or ``(H, W[, C])`` arrays; ``None``: :func:`sample_inputs`.
        source: how to name ``images`` in the summary.
        batch_size: images per call.

    Returns:
        The comparison (see :meth:`ExportCheck.passed`).
    """
    if images is None:
        images, source = sample_inputs(), "the bundled sample scans"
    if not images:
        raise ValueError("no images to check the export on")
    predictor = Predictor.from_file(model_path, device="cpu")
    inputs = [predictor.load_image(image)[0] for image in images]
    max_diff, abs_sum, values, reference_masks, exported_masks = 0.0, 0.0, 0, [], []
    for start in range(0, len(inputs), batch_size):
        batch = torch.stack(inputs[start : start + batch_size])
        reference = predictor.predict_batch(batch).cpu().numpy()
        if isinstance(exported, nn.Module):
            with torch.no_grad():
                probabilities = exported(batch).cpu().numpy()
        else:
            probabilities = np.asarray(exported(batch.numpy()))
        if probabilities.shape != reference.shape:
            raise ValueError(f"exported model returned shape {probabilities.shape}, PyTorch {reference.shape}")
        difference = np.abs(probabilities.astype(np.float64) - reference)
        max_diff, abs_sum, values = (
            max(max_diff, float(difference.max())),
            abs_sum + difference.sum(),
            values + difference.size,
        )
        reference_masks += [class_indices(p).astype(np.uint8) for p in reference]
        exported_masks += [class_indices(p).astype(np.uint8) for p in probabilities]
    num_classes = predictor.spec.num_classes
    dice = segmentation_metrics(exported_masks, reference_masks, num_classes)["pooled"]["dice"]
    differing = int(sum((a != b).sum() for a, b in zip(exported_masks, reference_masks, strict=True)))
    pixels = int(sum(m.size for m in reference_masks))
    name = source or "the given images"
    return ExportCheck(len(inputs), name, max_diff, float(abs_sum / values), float(dice), differing, pixels)
