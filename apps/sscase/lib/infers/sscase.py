"""Infer task: SS_CASE_UNet segmentation returned on exactly the input image's grid (what Slicer loads it onto)."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import HTTPException
from monai.inferers import Inferer
from monai.transforms import Lambdad
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.utils.others.generic import strtobool

from lib.datastore import refusal_status
from sscase_monai import biometry, io, markups
from sscase_monai.evaluation import file_pixel_spacing
from sscase_monai.inference import ProbabilityInferer, RestoreToOriginald, optimize_for_inference
from sscase_monai.model_files import ModelSpec, load_model
from sscase_monai.paths import default_workspace
from sscase_monai.transforms import build_preprocess

logger = logging.getLogger(__name__)

RESULT_DTYPES = ("uint8", "uint16", "int16", "int32")


_MODEL_LABELS = "_model_label_names"
"""Where the writer keeps the served model's labels until :meth:`SSCASEInfer.__call__` restores them."""


def result_folder() -> Path:
    """Where results wait to be sent: ``<workspace>/results`` (``$SSCASE_MONAI_HOME`` or ``~/.local/share/...``).

    Not the temp folder: MONAI Label's ``/infer`` deletes the result file after sending it, and its client saves
    its copy under the same file name in its own temp folder, by default ``/tmp``: with client and server on one
    machine the deletion removed the client's copy. No client saves into this folder.
    """
    folder = default_workspace() / "results"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def refuse_blank_image(image: torch.Tensor) -> torch.Tensor:
    """``image`` (``(C, H, W)`` as loaded), unless it is blank: the network would see nothing in it."""
    io.check_not_blank(np.moveaxis(np.asarray(image), 0, -1), image.meta.get("filename_or_obj", "the image"))
    return image


def _pixel_size(value: Any) -> float:
    """Request param ``pixel_size_mm``: a positive number (400 otherwise)."""
    try:
        size = float(value)
    except (TypeError, ValueError):
        size = float("nan")
    if not (size > 0 and size < float("inf")):
        raise HTTPException(400, f"pixel_size_mm must be a positive number of mm, got {value!r}")
    return size


class NoModelError(HTTPException):
    """409: no trained model exists yet (never run random weights)."""

    def __init__(self, paths: Sequence[str | None]):
        where = ", ".join(p for p in paths if p)
        super().__init__(
            status_code=409,
            detail=f"no trained model yet (looked for {where}): train one first (Train in Slicer's MONAI Label "
            "module, POST /train/sscase, or `sscase-monai train`), or start with --conf starter_model true",
        )


class SSCASEInfer(BasicInferTask):
    """Segment a 2-D ultrasound image (NIfTI/NRRD single slice, PNG, JPEG, DICOM) with the current model.

    The model in use is the last existing file of ``path`` (starter, then published); a newly published model is
    picked up at the next request (its modification time is checked). The result is a ``uint8`` label image with the
    input's size, spacing, origin and direction, in the requested ``result_extension`` (Slicer asks for ``.nrrd``).

    The result JSON also has ``biometry`` (:func:`sscase_monai.biometry.measure_biometry`: per label its area, the
    cerebellum's TCD with its end points, a head label's HC; points in Slicer's RAS; lengths in mm, or in pixels
    with a ``spacing_note`` for an image without spacing, unless the request gives ``pixel_size_mm``) and, with
    ``markups`` on, ``markups`` (a Slicer ``.mrk.json`` document: TCD line, HC closed curve) and ``markups_file``
    (where the server wrote it, relative to its workspace: ``results/markups/<image id>.mrk.json``).

    Args:
        path: candidate model files, lowest priority first.
        labels: label names and values.
        tta: test-time augmentation by default (request param ``tta`` overrides).
        head_labels: label names whose HC is reported, first match wins (``()``: none).
        markups: return and write the markups by default (request param ``markups`` overrides).
    """

    def __init__(
        self,
        path: Sequence[str | None],
        labels: dict[str, int],
        tta: bool = False,
        head_labels: Sequence[str] = biometry.HEAD_LABELS,
        markups: bool = True,
    ) -> None:
        super().__init__(
            path=[p for p in path if p],
            network=None,
            type=InferType.SEGMENTATION,
            labels=labels,
            dimension=2,
            description="SS_CASE_UNet segmentation of 2-D ultrasound (fetal cerebellum by default)",
            config={"tta": tta, "markups": markups},
        )
        self.head_labels = tuple(head_labels)
        self._lock = threading.Lock()
        self._loaded: dict[str, tuple[torch.nn.Module, ModelSpec, tuple[str, float]]] = {}

    def is_valid(self) -> bool:
        # listed even before a model exists, so clients see it; a request then gets a clear 409
        return True

    def current_model(self, device: str) -> tuple[torch.nn.Module, ModelSpec]:
        """The newest model file's network (optimised for inference) and spec, loaded once per version and device."""
        path = self.get_path()
        if not path:
            raise NoModelError(self.path)
        version = (path, os.stat(path).st_mtime)
        with self._lock:
            cached = self._loaded.get(device)
            if cached is None or cached[2] != version:
                network, spec = load_model(path, device=device)
                network = optimize_for_inference(network, inplace=True)
                self._loaded[device] = (network, spec, version)
                logger.info("infer model %s loaded on %s", path, device)
                if spec.labels != self.labels:  # results name the model's labels: they say what its mask values are
                    logger.warning("model %s has labels %s, not the configured %s", path, spec.labels, self.labels)
            network, spec, _ = self._loaded[device]
        return network, spec

    def _get_network(self, device: str, data: Any) -> torch.nn.Module:
        return self.current_model(device)[0]

    def pre_transforms(self, data: dict | None = None) -> Sequence[Callable]:
        spec = self.current_model(data["device"])[1]
        load, *rest = build_preprocess(
            input_size=spec.input_size,
            channels=spec.in_channels,
            num_classes=spec.num_classes,
            denoise=spec.denoise,
            keys=("image",),
        )
        return [load, Lambdad("image", refuse_blank_image), *rest]

    def inferer(self, data: dict | None = None) -> Inferer:
        tta = data.get("tta", self._config["tta"]) if data else self._config["tta"]
        return ProbabilityInferer(tta=bool(strtobool(str(tta))))

    def post_transforms(self, data: dict | None = None) -> Sequence[Callable]:
        return [RestoreToOriginald(keys="pred", ref_image="image", probabilities_key=None)]

    def writer(self, data: dict, extension: str | None = None, dtype: str | None = None) -> tuple[str, dict]:
        extension = data.get("result_extension") or extension or ".nrrd"
        dtype = data.get("result_dtype") or dtype or "uint8"
        if extension not in (".nrrd", ".nii.gz", ".nii", ".png"):
            raise HTTPException(400, f"result_extension must be .nrrd, .nii.gz, .nii or .png, got {extension!r}")
        if dtype not in RESULT_DTYPES:
            raise HTTPException(400, f"result_dtype must be one of {RESULT_DTYPES}, got {dtype!r}")
        mask: np.ndarray = data["pred"]
        # Slicer names label value v after the v-th name by value (MONAILabel.py: updateSegmentationMask)
        labels = self.current_model(data["device"])[1].labels
        present = {name: int((mask == value).sum()) for name, value in labels.items()}
        result = {"label_names": labels, _MODEL_LABELS: labels, "pixels": present, "tta": bool(self.inferer(data).tta)}
        result |= self.measurements(data, mask, labels)  # before the label is written: a 400 here leaves no file
        fd, path = tempfile.mkstemp(prefix="sscase-result-", suffix=extension, dir=result_folder())
        os.close(fd)
        io.write_mask(mask, data["geometry"], path, dtype=dtype)
        return path, result

    def measurements(self, data: dict, mask: np.ndarray, labels: dict[str, int]) -> dict[str, Any]:
        """``biometry`` of the mask and, unless turned off, its ``markups`` document and ``markups_file``."""
        geometry: io.ImageGeometry = data["geometry"]
        spacing = file_pixel_spacing(data.get("image_path") or "", geometry)
        if spacing is None and data.get("pixel_size_mm") not in (None, ""):
            spacing = _pixel_size(data["pixel_size_mm"])
        measured = biometry.measure_biometry(mask, geometry, labels, spacing, head=self.head_labels)
        result: dict[str, Any] = {"biometry": measured}
        if strtobool(str(data.get("markups", self._config["markups"]))):
            document = markups.biometry_markups(measured)
            result["markups"] = document
            if document is not None:
                stem = io.image_stem(data.get("image_path") or "result") or "result"
                written = markups.write_markups(document, result_folder() / "markups" / stem)
                # relative to the workspace: a result never shows the server's own paths
                result["markups_file"] = written.relative_to(default_workspace()).as_posix()
        return result

    def __call__(self, request: dict, callbacks: Any = None) -> tuple[str | None, dict]:
        try:
            label, result = super().__call__(request, callbacks)
        except HTTPException:
            raise
        except io.ImageReadError as e:
            raise HTTPException(status_code=refusal_status(str(e)), detail=str(e)) from e
        except RuntimeError as e:  # MONAI's Compose wraps a transform's error; show the cause
            cause = e.__cause__
            if isinstance(cause, io.ImageReadError | ValueError):
                raise HTTPException(status_code=422, detail=str(cause)) from e
            raise
        # MONAI Label replaces the writer's label_names with the configured labels after writing; Slicer names the
        # mask values by label_names, so they must be the served model's own (what its mask values mean)
        if isinstance(result, dict) and _MODEL_LABELS in result:
            result["label_names"] = result.pop(_MODEL_LABELS)
        return label, result
