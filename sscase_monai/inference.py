"""Prediction with a trained SS_CASE_UNet: image file or array in, mask on the image's own grid out.

One implementation serves the CLI (``sscase-monai predict|evaluate``), the trainer's pseudo-labelling and the MONAI
Label app: the same preprocessing as training (``transforms.build_preprocess``), optional test-time augmentation,
and restoration of the prediction to the original image size and geometry.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.networks.nets.efficientnet import EfficientNet, MBConvBlock
from monai.transforms import Compose, MapTransform
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from sscase_monai import io
from sscase_monai.method import PSEUDO_LABELS, TTA_VIEWS
from sscase_monai.model_files import ModelSpec, load_model
from sscase_monai.probabilities import DEFAULT_THRESHOLD, class_indices, probabilities_from_logits
from sscase_monai.transforms import format_input_size, resize_probabilities_to
from sscase_monai.tta import tta_predict

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """One image's prediction.

    Attributes:
        mask: ``(H, W)`` uint8 label values on the original image's grid (0 = background).
        probabilities: ``(C, H, W)`` float32 class probabilities on the original grid (C = 1 for binary: foreground).
        geometry: the original image's geometry (write the mask with ``io.write_mask(mask, geometry, path)``).
        source: the file predicted, or ``"<array>"``.
    """

    mask: np.ndarray
    probabilities: np.ndarray
    geometry: io.ImageGeometry
    source: str

    def confidence(self, threshold: float = PSEUDO_LABELS.confidence) -> float:
        """Fraction of pixels predicted with probability >= ``threshold`` for their class (the method's measure;
        default: the pseudo-label filter's confidence)."""
        p = self.probabilities
        best = np.maximum(p[0], 1.0 - p[0]) if p.shape[0] == 1 else p.max(axis=0)
        return float((best >= threshold).mean())


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def restore_prediction(
    probabilities: torch.Tensor, geometry: io.ImageGeometry, threshold: float = DEFAULT_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """``(C, H, W)`` network-size probabilities -> (``(H, W)`` uint8 mask, ``(C, H, W)`` probabilities) on the grid."""
    restored = np.asarray(resize_probabilities_to(probabilities.float().cpu(), geometry.shape_hw), np.float32)
    return class_indices(restored, threshold).astype(np.uint8), restored


# (conv, the batch norm right after it) in MONAI's EfficientNet modules: SS_CASE_UNet's encoder, FlexibleUNet's backbone
_CONV_BN_PAIRS: tuple[tuple[type[nn.Module], tuple[tuple[str, str], ...]], ...] = (
    (MBConvBlock, (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))),
    (EfficientNet, (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))),
)


def _fold_symmetric_padding(module: nn.Module, conv_name: str) -> bool:
    """Move a symmetric zero "same" padding (MONAI's ``<conv>_padding``) into the convolution itself."""
    pad = getattr(module, f"{conv_name}_padding", None)
    conv = getattr(module, conv_name)
    if not isinstance(pad, nn.ConstantPad2d) or pad.value != 0 or conv.padding_mode != "zeros":
        return False
    left, right, top, bottom = pad.padding
    if left != right or top != bottom or tuple(conv.padding) != (0, 0):
        return False
    conv.padding = (top, left)
    setattr(module, f"{conv_name}_padding", nn.Identity())
    return True


def optimize_for_inference(network: nn.Module, channels_last: bool | None = None, inplace: bool = False) -> nn.Module:
    """The same network, faster for inference: eval mode, batch norm folded into the convolution before it, symmetric
    zero paddings folded into their convolutions (MONAI EfficientNet blocks), and channels-last memory on the CPU.

    Outputs equal the original's up to float rounding. Measured on 2 CPU threads at 256x256, batch 1: SS_CASE_UNet
    and FlexibleUNet (EfficientNet encoders) 25-40 % faster, mostly from channels-last (``bench/run.py`` measures
    it); networks with instance norm (MONAI ``UNet``, ``BasicUNet``) were as fast or slower in channels-last, so by
    default they keep NCHW. Dropout layers are kept (MC-dropout still works), but the result has no batch norm left in
    those blocks: use it for inference only.

    Args:
        network: the network (left untouched unless ``inplace``).
        channels_last: channels-last memory format; ``None``: on the CPU, for networks without instance norm.
        inplace: change ``network`` itself instead of a copy (for a network loaded just for inference).

    Returns:
        The optimised network in eval mode, on the same device.
    """
    network = (network if inplace else copy.deepcopy(network)).eval()
    fused = padded = 0
    for module in network.modules():
        for owner, pairs in _CONV_BN_PAIRS:
            if not isinstance(module, owner):
                continue
            for conv_name, bn_name in pairs:
                conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
                if not isinstance(conv, nn.Conv2d):
                    continue
                if isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats and bn.running_mean is not None:
                    setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                    setattr(module, bn_name, nn.Identity())
                    fused += 1
                padded += _fold_symmetric_padding(module, conv_name)
    if channels_last is None:
        parameter = next(network.parameters(), None)
        on_cpu = parameter is None or parameter.device.type == "cpu"
        instance_norm = any(isinstance(m, nn.modules.instancenorm._InstanceNorm) for m in network.modules())
        channels_last = on_cpu and not instance_norm
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    logger.debug("optimised for inference: %d conv+bn folded, %d paddings folded", fused, padded)
    return network


class ProbabilityInferer(Inferer):
    """Network -> class probabilities, optionally averaged over the method's test-time views (one batched forward).

    A MONAI ``Inferer``: used by :class:`Predictor` and by the MONAI Label app's infer task alike.

    Args:
        tta: average identity, h-flip, v-flip, rot90 and rot270 (each inverted back) on probabilities.
        amp: bfloat16 autocast when the inputs are on CUDA.
    """

    def __init__(self, tta: bool = False, amp: bool = True) -> None:
        super().__init__()
        self.tta = tta
        self.amp = amp

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Probabilities ``(B, C, H, W)`` (C = 1 for binary: the foreground) for images ``(B, C_in, H, W)``."""
        inputs = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp and inputs.is_cuda):
            if self.tta:
                probabilities = tta_predict(network, inputs, transforms=TTA_VIEWS)
            else:
                probabilities = probabilities_from_logits(network(inputs))
        return probabilities.float()


class RestoreToOriginald(MapTransform):
    """Probabilities at the network's size -> label mask on the original image's grid.

    Reads the original geometry from the reference image's metadata (set by ``LoadUltrasoundd``); writes the
    ``(H, W)`` uint8 mask to ``keys`` and the restored probabilities to ``probabilities_key``.

    Args:
        keys: the prediction key(s) holding ``(C, H, W)`` probabilities.
        ref_image: the preprocessed image key whose meta has ``"geometry"``.
        probabilities_key: where to keep the restored probabilities (``None``: drop them).
        threshold: foreground threshold for a single-channel (binary) prediction.
    """

    def __init__(
        self,
        keys: str | Sequence[str] = "pred",
        ref_image: str = "image",
        probabilities_key: str | None = "probabilities",
        threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        super().__init__(keys)
        self.ref_image = ref_image
        self.probabilities_key = probabilities_key
        self.threshold = threshold

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        geometry = io.ImageGeometry.from_dict(d[self.ref_image].meta["geometry"])
        for key in self.key_iterator(d):
            prediction = d[key]
            prediction = prediction.as_tensor() if isinstance(prediction, MetaTensor) else torch.as_tensor(prediction)
            d[key], restored = restore_prediction(prediction, geometry, self.threshold)
            if self.probabilities_key:
                d[self.probabilities_key] = restored
        d["geometry"] = geometry
        return d


class SaveMaskd(MapTransform):
    """Write the restored mask of :class:`RestoreToOriginald` beside its siblings, as ``sscase-monai predict`` does.

    The file keeps the input's name and format (see :func:`prediction_path`) and its geometry; the written path goes
    to ``<key>_path``. Used by the MONAI bundle's post-processing (``sscase_monai.bundle``).

    Args:
        keys: the mask key(s), ``(H, W)`` uint8 on the original grid.
        output_dir: folder for the masks (created).
        ref_image: the image key whose meta has ``"filename_or_obj"`` (the input's file name).
        output_ext: write this format (``".nrrd"``, ``".nii.gz"``, ``".png"``) instead of the input's.
    """

    def __init__(
        self,
        keys: str | Sequence[str] = "pred",
        output_dir: str | os.PathLike = ".",
        ref_image: str = "image",
        output_ext: str | None = None,
    ) -> None:
        super().__init__(keys)
        self.output_dir = Path(output_dir)
        self.ref_image = ref_image
        self.output_ext = output_ext

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        source = d[self.ref_image].meta["filename_or_obj"]
        for key in self.key_iterator(d):
            target = prediction_path(source, self.output_dir, self.output_ext)
            d[f"{key}_path"] = str(io.write_mask(np.asarray(d[key]), d["geometry"], target))
            logger.info("wrote %s", d[f"{key}_path"])
        return d


class Predictor:
    """A trained network with its preprocessing, ready to segment images.

    Args:
        network: the network (moved to ``device`` and put in eval mode here).
        spec: its model settings (input size, channels, denoise, labels).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``None``/``"auto"``.
        tta: average the method's five test-time views (identity, flips, rot90, rot270) by default.
        amp: run the forward pass in bfloat16 autocast on CUDA.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        spec: ModelSpec,
        device: str | torch.device | None = None,
        tta: bool = False,
        amp: bool = True,
    ) -> None:
        self.device = resolve_device(device)
        self.network = network.to(self.device).eval()
        self.spec = spec
        self.tta = tta
        self.inferers = {flag: ProbabilityInferer(tta=flag, amp=amp) for flag in (False, True)}
        self.preprocess = Compose(spec.build_preprocess(keys=("image",)))

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, device: str | torch.device | None = None, tta: bool = False
    ) -> Predictor:
        """Load a saved model (``model.pt`` + ``model.json``), optimised with :func:`optimize_for_inference`."""
        device = resolve_device(device)
        network, spec = load_model(path, device=device)
        network = optimize_for_inference(network, inplace=True)
        size = format_input_size(spec.input_size)
        logger.info("loaded model %s (%s, input %s) on %s", path, spec.encoder, size, device)
        return cls(network, spec, device=device, tta=tta)

    def load_image(self, image: str | os.PathLike | np.ndarray) -> tuple[torch.Tensor, io.ImageGeometry, str]:
        """Preprocess one image: ``(C, H, W)`` network input, the original geometry and the source name."""
        data = self.preprocess({"image": str(image) if isinstance(image, (str, os.PathLike)) else image})
        tensor = data["image"]
        meta = tensor.meta
        return tensor.as_tensor(), io.ImageGeometry.from_dict(meta["geometry"]), str(meta["filename_or_obj"])

    @torch.no_grad()
    def predict_batch(self, images: torch.Tensor, tta: bool | None = None) -> torch.Tensor:
        """Probabilities ``(B, C, H, W)`` for preprocessed images ``(B, C, H, W)``."""
        inferer = self.inferers[self.tta if tta is None else bool(tta)]
        return inferer(images.to(self.device, non_blocking=True), self.network)

    def predict(self, image: str | os.PathLike | np.ndarray, tta: bool | None = None) -> Prediction:
        """Segment one image file (or ``(H, W[, C])`` array) and restore the result to its grid."""
        tensor, geometry, source = self.load_image(image)
        probabilities = self.predict_batch(tensor[None], tta=tta)[0]
        return self._restore(probabilities, geometry, source)

    def predict_many(
        self,
        images: Iterable[str | os.PathLike],
        batch_size: int = 8,
        tta: bool | None = None,
        skip_errors: bool = False,
    ) -> Iterator[Prediction | Exception]:
        """Segment files in batches, yielding one result per input, in input order.

        Args:
            images: image files.
            batch_size: images per forward pass.
            tta: override the predictor's test-time augmentation setting.
            skip_errors: yield the error of an image that cannot be read or preprocessed (not 2-D, unusable
                channels) in its place and go on, instead of raising it.
        """
        batch: list[tuple[torch.Tensor, io.ImageGeometry, str] | Exception] = []
        for image in images:
            try:
                batch.append(self.load_image(image))
            except (ValueError, RuntimeError, OSError) as e:
                if not skip_errors:
                    raise
                batch.append(e)
            if sum(not isinstance(item, Exception) for item in batch) == batch_size:
                yield from self._predict_loaded(batch, tta)
                batch = []
        if batch:
            yield from self._predict_loaded(batch, tta)

    def _predict_loaded(
        self, batch: Sequence[tuple[torch.Tensor, io.ImageGeometry, str] | Exception], tta: bool | None
    ) -> Iterator[Prediction | Exception]:
        loaded = [item for item in batch if not isinstance(item, Exception)]
        probabilities = iter(self.predict_batch(torch.stack([t for t, _, _ in loaded]), tta=tta) if loaded else [])
        for item in batch:
            if isinstance(item, Exception):
                yield item
            else:
                _, geometry, source = item
                yield self._restore(next(probabilities), geometry, source)

    def _restore(self, probabilities: torch.Tensor, geometry: io.ImageGeometry, source: str) -> Prediction:
        mask, restored = restore_prediction(probabilities, geometry)
        return Prediction(mask, restored, geometry, source)


def prediction_path(image_path: str | os.PathLike, out_dir: str | os.PathLike, extension: str | None = None) -> Path:
    """Where ``predict`` writes the mask of ``image_path``: same stem, the input's format (JPEG/DICOM -> PNG/NRRD)."""
    ext = extension or io.image_extension(image_path)
    ext = {".jpg": ".png", ".jpeg": ".png", ".dcm": ".nrrd", ".dicom": ".nrrd", ".nhdr": ".nrrd"}.get(ext, ext)
    return Path(out_dir) / f"{io.image_stem(image_path)}{ext}"
