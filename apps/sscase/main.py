"""The sscase MONAI Label app: SS_CASE_UNet segmentation of 2-D ultrasound for 3D Slicer.

Start it with ``sscase-monai serve`` (or ``monailabel start_server --app apps/sscase --studies DIR``). Every model
config in ``lib/configs`` is discovered and wired here; the algorithms live in the ``sscase_monai`` library.
"""

from __future__ import annotations

import importlib
import json
import logging
import os

import torch
from fastapi import HTTPException
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.class_utils import get_class_names

import lib.configs
import sscase_monai
from lib import serving
from lib.datastore import SSCASEDatastore
from lib.infers.sscase import SSCASEInfer, SSCASEMeasurementsInfer, measure_in_spacing, measurement_spacing
from lib.trainers.sscase import SSCASETrain, TrainingPlan
from sscase_monai import biometry, io
from sscase_monai.cli.serve import DATASTORE_FILE_EXTENSIONS
from sscase_monai.transforms import label_to_class_indices

logger = logging.getLogger(__name__)

_READABLE = ", ".join(io.IMAGE_EXTENSIONS)

PIXEL_SIZE_INFO = "pixel_size_mm"
"""Image info key of the pixel size a Run was given for a datastore image without spacing (Submit Label uses it)."""


def labels_of_saved_label(label_info: dict, model_labels: dict[str, int]) -> dict[str, int]:
    """``{name: value}`` of a saved label: Slicer's ``label_info`` (``[{"name", "idx"}]``, one per segment in the
    order they were exported) when it sent one, else the model's labels."""
    entries = label_info.get("label_info")
    if isinstance(entries, list) and entries and all(isinstance(e, dict) and "name" in e for e in entries):
        return {str(e["name"]): int(e.get("idx", i)) for i, e in enumerate(entries, start=1)}
    return dict(model_labels)


def saved_label_measurements(
    image_path: str, label_path: str, labels: dict[str, int], pixel_size_mm: float | None, head: tuple[str, ...]
) -> dict:
    """``measurements`` of a saved label file as short texts (e.g. ``{"TCD": "31.4 mm"}``), and ``unit_note`` when
    they are in pixels."""
    image_geometry = io.read_image(image_path)[1]
    array, geometry = io.read_image(label_path)
    mask = label_to_class_indices(array, max(labels.values(), default=1) + 1, "the saved label")
    spacing = measurement_spacing(image_path, image_geometry, pixel_size_mm)
    measured = measure_in_spacing(mask, geometry, labels, spacing, head)
    answer: dict = {"measurements": biometry.format_measurements(measured)}
    if spacing[0] is None:
        answer["unit_note"] = (
            "in pixels: the image has no pixel spacing; Run it once with pixel_size_mm (Options, infer) to get mm"
        )
    return answer


def _hide_server_path(error: HTTPException, path: str, shown: str) -> None:
    """Replace the server's own file path in a 4xx message by what the client knows the file as."""
    if error.status_code < 500 and isinstance(error.detail, str):
        error.detail = error.detail.replace(path, shown)


class SSCASEApp(MONAILabelApp):
    """MONAI Label app serving SS_CASE_UNet models configured in ``lib/configs``."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        if "MONAI_LABEL_DATASTORE_FILE_EXT" not in os.environ:
            # started with plain `monailabel start_server`: list the image types this app reads
            settings.MONAI_LABEL_DATASTORE_FILE_EXT = list(DATASTORE_FILE_EXTENSIONS)
        if "MONAI_LABEL_TRACKING_ENABLED" not in os.environ:
            settings.MONAI_LABEL_TRACKING_ENABLED = False

        self.model_dir = os.path.realpath(conf.get("model_dir", os.path.join(app_dir, "model")))
        os.makedirs(self.model_dir, exist_ok=True)
        self.models: dict[str, TaskConfig] = {}
        for class_name in sorted(get_class_names(lib.configs, "TaskConfig")):
            name = class_name.split(".")[-2].lower()
            module_name, _, attr = class_name.rpartition(".")
            config: TaskConfig = getattr(importlib.import_module(module_name), attr)()
            config.init(name, self.model_dir, conf, None)
            self.models[name] = config
            logger.info("+++ model config %s => %s", name, class_name)

        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="sscase-monai: fetal cerebellum segmentation in 2-D ultrasound",
            description="SS_CASE_UNet (semi-supervised attention U-Net) on MONAI, trained in three stages",
            version=sscase_monai.__version__,
        )
        logger.info("studies: %s; models: %s; model folder: %s", studies, list(self.models), self.model_dir)

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        num_classes = max((m.spec.num_classes for m in self.models.values()), default=2)
        logger.info("datastore %s with %s", self.studies, json.dumps(settings.MONAI_LABEL_DATASTORE_FILE_EXT))
        return SSCASEDatastore(
            self.studies,
            num_classes=num_classes,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def infer(self, request: dict, datastore: Datastore | None = None) -> dict:
        """Infer on a datastore image id, an uploaded file or a session's image; never on an arbitrary server path."""
        self._require(self._infers, request.get("model"), "model")
        path, shown = self._image_file(request, datastore)
        try:
            result = super().infer(request, datastore)
        except HTTPException as e:
            if path:
                _hide_server_path(e, path, shown)
            raise
        self._remember_pixel_size(request, result)
        return result

    def _remember_pixel_size(self, request: dict, result: dict) -> None:
        """Keep a Run's ``pixel_size_mm`` of a datastore image without spacing in its info: Submit Label measures the
        corrected label in the same unit."""
        measured = (result.get("params") or {}).get("biometry") or {}
        from_datastore = not request.get(serving.UPLOADED_FILE_KEY) and not request.get(serving.SESSION_KEY)
        if measured.get("spacing_source") != "pixel_size_mm" or not from_datastore:
            return
        store = self.datastore()
        if isinstance(store, SSCASEDatastore):
            store.update_image_info(request["image"], {PIXEL_SIZE_INFO: measured["spacing_mm"][0]})

    def _image_file(self, request: dict, datastore: Datastore | None) -> tuple[str | None, str | None]:
        """The file an infer request segments and the name its messages show, from what the request says it is.

        MONAI Label's endpoint sets ``session`` for a ``session_id`` (Slicer 0.8.5's Run on a volume it opened), the
        app's infer route :data:`lib.serving.UPLOADED_FILE_KEY` for a file in the request; anything else is a
        datastore id (400 for a path-like one, 404 for an unknown one).
        """
        image = request.get("image")
        if not isinstance(image, str):
            return None, None
        if request.get(serving.SESSION_KEY):
            sessions = self.sessions()
            store = os.path.realpath(sessions.store_path) if sessions is not None else None
            if not store or os.path.commonpath([store, os.path.realpath(image)]) != store:
                raise HTTPException(404, "unknown or expired session: send the image again")
            return self._check_image_type(image, "the session's image"), "the session's image"
        if request.get(serving.UPLOADED_FILE_KEY):
            return self._check_image_type(image, "uploaded file"), "the uploaded image"
        store = datastore or self.datastore()
        if isinstance(store, SSCASEDatastore):
            path = store.image_path_of(image)
            return path, os.path.basename(path)
        return None, None

    @staticmethod
    def _check_image_type(path: str, what: str) -> str:
        """``path``, or a 415 when its file type is not one the app reads."""
        if not os.path.isfile(path) or not io.is_image_file(path):
            extension = io.image_extension(path)
            raise HTTPException(415, f"{what} type {extension!r} is not an image; send one of {_READABLE}")
        return path

    def batch_infer(self, request: dict, datastore: Datastore | None = None) -> dict:
        """Infer every selected image and save the masks as ``original`` labels (Slicer shows them on Next Sample)."""
        self._require(self._infers, request.get("model"), "model")
        if not torch.cuda.is_available():
            # MONAI Label spreads batch infer over the GPUs it counts; with none it would divide by zero
            request = {**request, "multi_gpu": False, "device": "cpu"}
        return self._batch_infer(request, datastore or self.datastore(), self._infer_or_skip)

    def _infer_or_skip(self, request: dict, datastore: Datastore | None = None) -> dict:
        """One image of a batch infer: an image the server refuses (unreadable, blank, ...) is logged and left out,
        instead of ending the whole batch there."""
        try:
            return self.infer(request, datastore)
        except HTTPException as e:
            if e.status_code >= 500:
                raise
            logger.warning("batch infer: %s left out: %s", request.get("image"), e.detail)
            return {"label": None, "refused": e.detail}

    def bundle_path(self, model: str | None) -> str | None:
        # the one app hook the server calls before it starts a background train or batch infer: an unknown model
        # gets its 404 here, instead of a task that is accepted and then fails in the background
        if model is not None and model not in self._trainers and model not in self._infers:
            self._require(self._trainers, model, "model")
        if model not in self._trainers and isinstance(self._infers.get(model), SSCASEMeasurementsInfer):
            segmentation = [name for name, task in self._infers.items() if type(task) is SSCASEInfer]
            raise HTTPException(
                400, f"{model!r} returns markups, not masks: batch infer one of {segmentation}, which saves labels"
            )
        return super().bundle_path(model)

    def plan_training(self, model: str, params: dict) -> TrainingPlan | None:
        """Check a Train request before it starts (404 unknown model, 400 bad option, 409 too few labels)."""
        self._require(self._trainers, model, "model")
        task = self._trainers[model]
        return task.plan({**params, "model": model}, self.datastore()) if isinstance(task, SSCASETrain) else None

    def publish_training_start(self, model: str, plan: TrainingPlan | None) -> None:
        """Epoch 0 of a training just started, in ``/info`` ``train_stats`` (what Slicer's progress bar reads)."""
        task = self._trainers.get(model)
        if plan is not None and isinstance(task, SSCASETrain):
            task.start_stats(plan)

    def train(self, request: dict) -> dict:
        self._require(self._trainers, request.get("model"), "model")
        return super().train(request)

    def scoring(self, request: dict, datastore: Datastore | None = None) -> dict:
        self.require_scoring_method(request.get("method"))
        return super().scoring(request, datastore)

    def require_scoring_method(self, method: str | None) -> None:
        """404 naming the available methods unless ``method`` is one."""
        self._require(self._scoring_methods, method, "scoring method")

    def server_mode(self, mode: bool) -> None:
        super().server_mode(mode)
        if mode:  # the server is starting with this app: check what its endpoints miss, stop its tasks on exit
            serving.add_request_checks(self)
            serving.stop_background_tasks_on_exit()

    def on_save_label(self, image_id: str, label_id: str) -> dict:
        """What Slicer's Submit Label dialog shows: the measurements of the label as saved (the corrected mask the
        sonographer signs off) and how many images are labelled."""
        store = self.datastore()
        images = store.list_images()
        answer: dict = {"labelled": f"{len(store.get_labeled_images())} of {len(images)} images have a final label"}
        config = next(iter(self.models.values()), None)
        if config is None or not isinstance(store, SSCASEDatastore):
            return answer
        tags = store.get_labels_by_image_id(image_id)
        # the label just saved is the newest of the image's labels (the endpoint does not pass its tag on)
        tag = max(tags, key=lambda t: store.get_label_info(image_id, t).get("ts", 0), default=None)
        if tag is None:
            return answer
        info = store.get_image_info(image_id)
        try:
            answer |= saved_label_measurements(
                store.get_image_uri(image_id),
                store.get_label_uri(image_id, tag),
                labels_of_saved_label(store.get_label_info(image_id, tag), config.labels),
                info.get(PIXEL_SIZE_INFO),
                head=config.head_labels,
            )
        except (io.ImageReadError, ValueError) as e:  # the label is saved; only its measurement failed
            logger.warning("measuring the saved label of %s failed: %s", image_id, e)
            answer["measurements"] = f"not measured: {e}"
        return answer

    def next_sample(self, request: dict) -> dict:
        strategy = request.get("strategy") or self.default_strategy
        self._require(self._strategies, strategy, "strategy")
        request = {**request, "strategy": strategy}
        store = self.datastore()
        if not store.get_unlabeled_images():
            total = len(store.list_images())
            raise HTTPException(
                404, f"no unlabelled image left: all {total} images in the datastore have a final label"
            )
        return super().next_sample(request)

    @staticmethod
    def _require(tasks: dict, name: str | None, what: str) -> None:
        if not name or name not in tasks:
            raise HTTPException(404, f"unknown {what} {name!r}; available: {sorted(tasks)}")

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, config in self.models.items():
            task = config.infer()
            infers.update(task if isinstance(task, dict) else {name: task})
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        trainers: dict[str, TrainTask] = {}
        for name, config in self.models.items():
            task = config.trainer()
            if task:
                trainers[name] = task
        return trainers

    @property
    def default_strategy(self) -> str:
        """Next Sample's strategy when a request names none: the first model config's ``--conf strategy``."""
        return next((getattr(c, "default_strategy", "random") for c in self.models.values()), "random")

    def init_strategies(self) -> dict[str, Strategy]:
        strategies: dict[str, Strategy] = {"random": Random(), "first": First()}
        for config in self.models.values():
            task = config.strategy()
            if task:
                strategies.update(task)
        default = self.default_strategy
        if default not in strategies:
            raise ValueError(f"default strategy {default!r} is not offered; available: {sorted(strategies)}")
        # the default first: Slicer's Next Sample preselects the first strategy the server lists
        return {default: strategies[default], **{k: v for k, v in strategies.items() if k != default}}

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        methods: dict[str, ScoringMethod] = {}
        for config in self.models.values():
            task = config.scoring_method()
            if task:
                methods.update(task)
        return methods
