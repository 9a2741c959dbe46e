"""The sscase MONAI Label app: SS_CASE_UNet segmentation of 2-D ultrasound for 3D Slicer.

Start it with ``sscase-monai serve`` (or ``monailabel start_server --app apps/sscase --studies DIR``). Every model
config in ``lib/configs`` is discovered and wired here; the algorithms live in the ``sscase_monai`` library.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import tempfile

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
from sscase_monai import io
from sscase_monai.cli.serve import DATASTORE_FILE_EXTENSIONS

logger = logging.getLogger(__name__)

_READABLE = ", ".join(io.IMAGE_EXTENSIONS)


def _is_upload(image: str) -> bool:
    """Whether ``image`` is a file the server itself just wrote from an upload (``tmpXXXXXXXX`` in its temp folder)."""
    if "\0" in image or not os.path.isabs(image):
        return False
    path = os.path.realpath(image)
    in_tmp = os.path.dirname(path) == os.path.realpath(tempfile.gettempdir())
    return in_tmp and os.path.basename(path).startswith("tmp") and os.path.isfile(path)


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
        """Infer on a datastore image id or an uploaded file; never on an arbitrary server path."""
        self._require(self._infers, request.get("model"), "model")
        image = request.get("image")
        path, shown = None, None
        if image == "":  # the endpoint sent neither an image nor a file, only a session id it did not find
            raise HTTPException(404, "unknown or expired session id: send the image again (?image=ID or a file)")
        if isinstance(image, str) and _is_upload(image):
            if not io.is_image_file(image):
                raise HTTPException(
                    415, f"uploaded file type {io.image_extension(image)!r} is not an image; send one of {_READABLE}"
                )
            path, shown = image, "the uploaded image"
        elif isinstance(image, str):
            store = datastore or self.datastore()
            if isinstance(store, SSCASEDatastore):
                path = store.image_path_of(image)  # 400 for a path-like id, 404 for an unknown one
                shown = os.path.basename(path)
        try:
            return super().infer(request, datastore)
        except HTTPException as e:
            if path:
                _hide_server_path(e, path, shown)
            raise

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
        return super().bundle_path(model)

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
