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

from lib.datastore import refusal
from sscase_monai import biometry, io, markups
from sscase_monai.evaluation import file_pixel_spacing
from sscase_monai.inference import ProbabilityInferer, RestoreToOriginald, optimize_for_inference
from sscase_monai.model_files import ModelSpec, load_model
from sscase_monai.paths import default_workspace

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


def requested_pixel_size(value: Any) -> float | None:
    """Request param ``pixel_size_mm``: ``None`` when not given (blank or 0, as Slicer's Options table sends an empty
    cell), else a positive number of mm.

    Raises:
        HTTPException: 400 for anything else.
    """
    if value in (None, "", 0, 0.0, "0"):
        return None
    try:
        size = float(value)
    except (TypeError, ValueError):
        size = float("nan")
    if not (size > 0 and size < float("inf")):
        raise HTTPException(400, f"pixel_size_mm must be a positive number of mm (or 0: not given), got {value!r}")
    return size


def measurement_spacing(
    image_path: str, geometry: io.ImageGeometry, pixel_size_mm: Any
) -> tuple[tuple[float, float] | None, str]:
    """The pixel spacing to measure in and where it comes from: ``"file"``, ``"pixel_size_mm"`` or ``"none"``.

    The file's own spacing wins; ``pixel_size_mm`` serves an image without one
    (:data:`sscase_monai.io.UNKNOWN_SPACING_RULE`: a PNG, or the NIfTI Slicer sends for one).
    """
    requested = requested_pixel_size(pixel_size_mm)
    spacing = file_pixel_spacing(image_path, geometry)
    if spacing is not None:
        if requested is not None and not np.allclose(spacing, requested, rtol=0.01):
            logger.info("pixel_size_mm %s ignored: the image's own spacing is %s", requested, spacing)
        return spacing, "file"
    if requested is not None:
        return (requested, requested), "pixel_size_mm"
    return None, "none"


def _array(value: Any) -> np.ndarray | None:
    return None if value is None else np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value)


def measure_in_spacing(
    mask: np.ndarray,
    geometry: io.ImageGeometry,
    labels: dict[str, int],
    spacing: tuple[tuple[float, float] | None, str],
    head: Sequence[str],
    probabilities: np.ndarray | None = None,
) -> dict[str, Any]:
    """:func:`sscase_monai.biometry.measure_biometry` in the spacing :func:`measurement_spacing` chose, with
    ``spacing_source`` and, without a spacing, how to give one from Slicer."""
    value, source = spacing
    measured = biometry.measure_biometry(mask, geometry, labels, value, head=head, probabilities=probabilities)
    measured["spacing_source"] = source
    if value is None:
        measured["spacing_note"] += "; give the scan's pixel size as pixel_size_mm (Slicer: Options, infer)"
    return measured


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
    with a ``spacing_note`` for an image without spacing (:data:`sscase_monai.io.UNKNOWN_SPACING_RULE`), unless the
    request gives ``pixel_size_mm``; ``spacing_source`` says which) and, with ``markups`` on, ``markups`` (a Slicer
    ``.mrk.json`` document: TCD line, HC closed curve). :class:`SSCASEMeasurementsInfer` returns that document as
    the result file, which Slicer's module loads as markups.

    Args:
        path: candidate model files, lowest priority first.
        labels: label names and values.
        tta: test-time augmentation by default (request param ``tta`` overrides).
        head_labels: label names whose HC is reported, first match wins (``()``: none).
        markups: return the markups document in the result JSON by default (request param ``markups`` overrides).
        description: shown as the model's tooltip in Slicer.
    """

    def __init__(
        self,
        path: Sequence[str | None],
        labels: dict[str, int],
        tta: bool = False,
        head_labels: Sequence[str] = biometry.HEAD_LABELS,
        markups: bool = True,
        description: str = "SS_CASE_UNet segmentation of 2-D ultrasound (fetal cerebellum by default)",
    ) -> None:
        super().__init__(
            path=[p for p in path if p],
            network=None,
            type=InferType.SEGMENTATION,
            labels=labels,
            dimension=2,
            description=description,
            # every entry is a row of Slicer's Options table, sent with every Run (a float 0 shows as an empty cell)
            config={"tta": tta, "markups": markups, "pixel_size_mm": 0.0},
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
        load, *rest = spec.build_preprocess(keys=("image",))
        return [load, Lambdad("image", refuse_blank_image), *rest]

    def inferer(self, data: dict | None = None) -> Inferer:
        tta = data.get("tta", self._config["tta"]) if data else self._config["tta"]
        return ProbabilityInferer(tta=bool(strtobool(str(tta))))

    def post_transforms(self, data: dict | None = None) -> Sequence[Callable]:
        # the probabilities on the image's grid too: the HC's reliability check reads them, as in predict / evaluate
        return [RestoreToOriginald(keys="pred", ref_image="image", probabilities_key="probabilities")]

    def writer(self, data: dict, extension: str | None = None, dtype: str | None = None) -> tuple[str, dict]:
        extension = data.get("result_extension") or extension or ".nrrd"
        dtype = data.get("result_dtype") or dtype or "uint8"
        if extension not in (".nrrd", ".nii.gz", ".nii", ".png"):
            raise HTTPException(400, f"result_extension must be .nrrd, .nii.gz, .nii or .png, got {extension!r}")
        if dtype not in RESULT_DTYPES:
            raise HTTPException(400, f"result_dtype must be one of {RESULT_DTYPES}, got {dtype!r}")
        mask: np.ndarray = data["pred"]
        result = self.result_params(data, mask)  # before the label is written: a 400 here leaves no file
        fd, path = tempfile.mkstemp(prefix="sscase-result-", suffix=extension, dir=result_folder())
        os.close(fd)
        io.write_mask(mask, data["geometry"], path, dtype=dtype)
        return path, result

    def result_params(self, data: dict, mask: np.ndarray) -> dict[str, Any]:
        """The result JSON of a mask: the served model's ``label_names``, pixels per label, TTA and measurements."""
        # Slicer names label value v after the v-th name by value (MONAILabel.py: updateSegmentationMask)
        labels = self.current_model(data["device"])[1].labels
        present = {name: int((mask == value).sum()) for name, value in labels.items()}
        result = {"label_names": labels, _MODEL_LABELS: labels, "pixels": present, "tta": bool(self.inferer(data).tta)}
        return result | self.measurements(data, mask, labels)

    def measurements(self, data: dict, mask: np.ndarray, labels: dict[str, int]) -> dict[str, Any]:
        """``biometry`` of the mask and, unless turned off, its ``markups`` document."""
        geometry: io.ImageGeometry = data["geometry"]
        spacing = measurement_spacing(data.get("image_path") or "", geometry, data.get("pixel_size_mm"))
        probabilities = _array(data.get("probabilities"))
        measured = measure_in_spacing(mask, geometry, labels, spacing, self.head_labels, probabilities)
        result: dict[str, Any] = {"biometry": measured}
        if strtobool(str(data.get("markups", self._config.get("markups", True)))):
            result["markups"] = markups.biometry_markups(measured)
        return result

    def __call__(self, request: dict, callbacks: Any = None) -> tuple[str | None, dict]:
        try:
            label, result = super().__call__(request, callbacks)
        except HTTPException:
            raise
        except io.ImageReadError as e:
            raise refusal(e) from e
        except RuntimeError as e:  # MONAI's Compose wraps a transform's error; show the cause
            cause = e.__cause__
            if isinstance(cause, io.ImageReadError):
                raise refusal(cause) from e
            if isinstance(cause, ValueError):
                raise refusal(io.ImageReadError(str(cause))) from e
            raise
        # MONAI Label replaces the writer's label_names with the configured labels after writing; Slicer names the
        # mask values by label_names, so they must be the served model's own (what its mask values mean)
        if isinstance(result, dict) and _MODEL_LABELS in result:
            result["label_names"] = result.pop(_MODEL_LABELS)
        return label, result


class SSCASEMeasurementsInfer(SSCASEInfer):
    """The same segmentation and measurements as :class:`SSCASEInfer`, returned as a Slicer markups file.

    Slicer's MONAI Label module loads a Run's result file that ends in ``.json`` as markups
    (``slicer.util.loadMarkups``) and reads nothing else of the result but ``label_names``: this is the way a
    measurement reaches the screen with no manual step. The file is the ``markups`` document of the segmentation
    (TCD line, HC closed curve, their values in the names); a mask with nothing to measure is a 422 saying so, which
    the module shows in its error dialog.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._config.pop("markups")  # always on here: no Options row for it

    def writer(self, data: dict, extension: str | None = None, dtype: str | None = None) -> tuple[str, dict]:
        result = self.result_params({**data, "markups": True}, data["pred"])
        document = result["markups"]
        if document is None:
            raise HTTPException(
                422,
                f"nothing to measure: the segmentation found no structure with a TCD or HC ({result['pixels']} pixels)",
            )
        fd, path = tempfile.mkstemp(prefix="sscase-result-", suffix=markups.MARKUPS_EXTENSION, dir=result_folder())
        os.close(fd)
        markups.write_markups(document, path)
        return path, result
