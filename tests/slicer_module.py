"""3D Slicer's MONAI Label module, request for request, without its window.

Each method does what a button of the module does (``plugins/slicer/MONAILabel/MONAILabel.py`` in the MONAILabel
repository, the 0.8.5 tag and main): the same ``monailabel`` client, the same params built from ``/info`` (every
``config`` entry, first item of a list, ``result_extension=.nrrd`` and ``result_dtype=uint8`` forced), volumes
saved with Slicer's own volume storage node (what ``slicer.util.saveNode`` does) and results loaded with Slicer's
readers (``slicer_io``).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import SimpleITK as sitk
import slicer
from monailabel.client import MONAILabelClient
from slicer_io import load_markups, load_volume, read_volume_node


def save_volume_as_slicer(image: str | Path, out: str | Path, labelmap: bool = False) -> Path:
    """Open ``image`` as Slicer does and save the volume node to ``out`` with Slicer's storage node (``saveNode``).

    slicer-core has no PNG reader: a PNG/JPEG goes through SimpleITK first, whose geometry is ITK's (unit spacing,
    zero origin, identity direction), the geometry Slicer's own ITK reader gives it.
    """
    image, out = Path(image), Path(out)
    if image.suffix.lower() in (".png", ".jpg", ".jpeg"):
        converted = out.with_name(out.name.split(".")[0] + "_read.nrrd")
        sitk.WriteImage(sitk.ReadImage(str(image)), str(converted))
        image = converted
    node = read_volume_node(image, labelmap)
    writer = slicer.vtkMRMLVolumeArchetypeStorageNode()
    node.GetScene().AddNode(writer)
    writer.SetFileName(str(out))
    writer.SetUseCompression(True)
    if not writer.WriteData(node):
        raise OSError(f"Slicer could not write {out}")
    return out


def progress_percent(stats: dict) -> float:
    """The progress bar's percent ``monitorTraining`` shows for one model's ``train_stats`` while the task RUNS."""
    current = 0 if stats.get("total_time") else stats.get("epoch", 1)
    return max(1, 100 * current / stats.get("total_epochs", 1))


@dataclass
class RunResult:
    """What Run leaves in Slicer: the result file, its JSON and what was loaded from it."""

    file: str
    params: dict[str, Any]
    labelmap: Any = None
    markups: list = field(default_factory=list)


class SlicerModule:
    """The module's buttons against a server (``url``); files it writes go to ``workdir`` (its temp folder)."""

    def __init__(self, url: str, workdir: str | Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.client = MONAILabelClient(url, tmpdir=str(self.workdir))
        self.info: dict[str, Any] = {}
        self.fetch_info()

    def fetch_info(self) -> dict[str, Any]:
        """The refresh button (``fetchInfo``)."""
        self.info = self.client.info()
        return self.info

    def params_from_config(self, section: str, name: str, edits: dict[str, Any] | None = None) -> dict[str, Any]:
        """``getParamsFromConfig``: every config entry, first item of a list; ``edits`` = cells the user changed in
        the Options table (cast back to the entry's type, as ``invalidateConfigTable`` does)."""
        config = dict(self.info[section][name].get("config", {}))
        for key, value in (edits or {}).items():
            original = config[key]
            if isinstance(original, bool):
                value = bool(value)
            elif isinstance(original, int):
                value = int(value) if value else 0
            elif isinstance(original, float):
                value = float(value) if value else 0.0
            config[key] = value
        return {k: v[0] if isinstance(v, list) else v for k, v in config.items()}

    def _temporary_file(self) -> str:
        """A new ``tmpXXXX.nii.gz`` in the module's folder, as ``tempfile.NamedTemporaryFile(...).name`` gives it."""
        handle, path = tempfile.mkstemp(suffix=".nii.gz", dir=self.workdir)
        os.close(handle)
        return path

    def _saved_volume(self, image: str | Path) -> str:
        return str(save_volume_as_slicer(image, self._temporary_file()))

    def upload_image(self, image: str | Path, volume_name: str) -> str:
        """main's Run on a volume it opened: ``onUploadImage`` puts it in the datastore under the volume's name."""
        self.client.upload_image(self._saved_volume(image), volume_name)
        return volume_name

    def create_session(self, image: str | Path) -> str:
        """0.8.5's Run on a volume it opened: ``onUploadImage(session=True)`` creates a session with it."""
        return self.client.create_session(self._saved_volume(image))["session_id"]

    def run(
        self, model: str, image_id: str, session_id: str | None = None, options: dict[str, Any] | None = None
    ) -> RunResult:
        """Run (``onClickSegmentation``): infer, then load the file as ``updateSegmentationMask`` does."""
        params = self.params_from_config("models", model, options)
        params["result_extension"] = ".nrrd"
        params["result_dtype"] = "uint8"
        file, answer = self.client.infer(model, image_id, params, session_id=session_id)
        result = RunResult(file, answer)
        if file.endswith(".json"):
            result.markups = load_markups(file)
        elif not file.endswith(".seg.nrrd"):
            result.labelmap = load_volume(file, labelmap=True)
        return result

    def submit_label(self, image_id: str, label: str | Path, segments: list[str]) -> dict[str, Any]:
        """Submit Label (``onSaveLabel``): the labelmap saved as ``.nii.gz`` and ``label_info``; returns the answer
        the module shows in its dialog."""
        path = self._temporary_file()
        save_volume_as_slicer(label, path, labelmap=True)
        label_info = [{"name": name, "idx": i} for i, name in enumerate(segments, start=1)]
        answer = self.client.save_label(image_id, path, params={"label_info": label_info})
        self.fetch_info()
        return answer

    def train(self, trainer: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train (``onTraining``) with the trainer's Options."""
        return self.client.train_start(trainer, self.params_from_config("trainers", trainer, options))

    def training_progress(self) -> tuple[str, float | None, float | None]:
        """One tick of ``monitorTraining``: the task status, and while it runs the progress bar's percent and the
        accuracy bar's value (``None`` when the module leaves them, e.g. empty ``train_stats``)."""
        status = self.client.train_status(False) or {}
        if status.get("status") != "RUNNING":
            return status.get("status", "DONE"), 100.0, None
        stats = self.client.info().get("train_stats")
        if not stats:
            return "RUNNING", None, None
        stats = next(iter(stats.values()))
        return "RUNNING", progress_percent(stats), stats.get("best_metric", 0)

    def wait_for_training(self, timeout: float = 600.0, poll: float = 1.0) -> list[tuple[str, float | None]]:
        """Poll as the module does (every 5 s there; ``poll`` here) until the training ends; the ticks seen."""
        ticks = []
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            status, percent, _ = self.training_progress()
            ticks.append((status, percent))
            if status != "RUNNING" and status != "SUBMITTED":
                return ticks
            time.sleep(poll)
        raise TimeoutError(f"training still running after {timeout} s: {ticks[-3:]}")
