"""MONAI Label's local datastore, made safe for clinical use: bad uploads get a 4xx with the reason, nothing is
written outside the studies folder, and concurrent writers (server, training and scoring processes) never lose
each other's updates or leave a half-written index."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Any

import numpy as np
from fastapi import HTTPException
from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore, LocalDatastoreModel
from watchdog.events import FileCreatedEvent, FileDeletedEvent, FileModifiedEvent, FileMovedEvent

from sscase_monai import io
from sscase_monai.data import labelled_pair_problems
from sscase_monai.model_files import atomic_copy, atomic_write_bytes
from sscase_monai.transforms import label_to_class_indices

logger = logging.getLogger(__name__)

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,199}$")
"""Image ids and label tags become file names: letters, digits, ``._ -``; no path separators, no leading dot."""


def check_safe_name(value: str, what: str) -> str:
    """``value`` if it is a safe file-name component, else a 400 naming it."""
    if not isinstance(value, str) or not SAFE_NAME.match(value) or ".." in value:
        raise HTTPException(400, f"invalid {what} {value!r}: use letters, digits, '.', '_', '-' and spaces only")
    return value


class SSCASEDatastore(LocalDatastore):
    """A ``LocalDatastore`` that checks what it is given and writes its index atomically.

    Args:
        datastore_path: the studies folder.
        num_classes: classes including background; saved labels must hold only values ``0..num_classes-1``
            (``{0, 255}`` accepted for binary).
        max_pixels: largest image accepted.
        kwargs: passed to ``LocalDatastore``.
    """

    def __init__(
        self, datastore_path: str, num_classes: int = 2, max_pixels: int = io.DEFAULT_MAX_PIXELS, **kwargs: Any
    ) -> None:
        self.num_classes = num_classes
        self.max_pixels = max_pixels
        super().__init__(datastore_path, **kwargs)
        self._watch_changes_only()

    def _watch_changes_only(self) -> None:
        """Re-schedule MONAI Label's folder watcher for the events its handler uses (created, deleted, modified, moved).

        It subscribed to every inotify event, so each read of a studies file (Run on a datastore id) woke the watcher
        thread on open and close, which then waited for the GIL held by the request: the image load took 22-24 ms
        instead of 5-9 ms for the same file uploaded (``bench/RESULTS.md``, server path).
        """
        observer, handler = getattr(self, "_observer", None), getattr(self, "_handler", None)
        if observer is None or handler is None or not observer.is_alive():
            return
        handler.on_moved = self._on_moved_event
        observer.unschedule_all()
        try:
            observer.schedule(
                handler,
                self._datastore_path,
                recursive=True,
                event_filter=[FileCreatedEvent, FileDeletedEvent, FileModifiedEvent, FileMovedEvent],
            )
        except TypeError:  # a watchdog before 4.0 has no event filter: watch everything, as MONAI Label did
            observer.schedule(handler, self._datastore_path, recursive=True)

    def _on_moved_event(self, event: FileMovedEvent) -> None:
        """Re-read the index another process replaced (written to a temporary file and renamed into place, so the
        event is a move, which MONAI Label's handler ignores): without this the server kept serving the index it
        had, e.g. the scores a scoring process wrote after a training never reached Next Sample."""
        if os.path.realpath(event.dest_path) == os.path.realpath(self._datastore_config_path):
            with FileLock(self._lock_file):
                self._reload_index()

    def image_path_of(self, image_id: str) -> str:
        """The file of a datastore image, or a 404 naming the id."""
        check_safe_name(image_id, "image id")
        uri = self.get_image_uri(image_id)
        if not uri or not os.path.isfile(uri):
            raise HTTPException(404, f"image {image_id!r} is not in the datastore")
        return uri

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        _, ext = self._to_id(os.path.basename(image_filename))
        check_safe_name(image_id or os.path.basename(image_filename), "image id")
        if f"*{ext}" not in self._extensions:
            raise HTTPException(415, f"image type {ext!r} is not served; use one of {self._extensions}")
        try:
            array, _ = io.read_image(image_filename, max_pixels=self.max_pixels)
            io.check_not_blank(array, image_filename)
        except io.ImageReadError as e:
            raise refusal(e, f"image {image_id!r} refused: ", {str(image_filename): "the uploaded file"}) from e
        if array.ndim == 3 and array.shape[-1] == 4 and (array[..., 3] != array[..., 3].max()).any():
            raise HTTPException(422, f"image {image_id!r} has transparency (RGBA with a varying alpha channel)")
        image_id = image_id or self._to_id(os.path.basename(image_filename))[0]
        name = self._filename(image_id, ext)
        with FileLock(self._lock_file):
            self._reload_index()
            atomic_copy(image_filename, os.path.join(self._datastore.image_path(), name))
            info = {**(image_info or {}), "ts": int(time.time()), "name": name}
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext))
            self._update_datastore_file(lock=False)
        logger.info("added image %s (%s)", image_id, name)
        return image_id

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        check_safe_name(label_tag, "label tag")
        image = self.image_path_of(image_id)
        problems = labelled_pair_problems(image, label_filename, self.num_classes, self.max_pixels)
        if problems:
            # the messages name the server's files: say which upload (and which image) they are instead
            shown = {f"label {label_filename}": "the uploaded label", str(label_filename): "the uploaded label"}
            raise refusal(
                problems, f"label for image {image_id!r} refused: ", {**shown, image: os.path.basename(image)}
            )
        self._refuse_foreground_on_blank(image_id, image, label_filename)
        _, ext = self._to_id(os.path.basename(label_filename))
        name = self._filename(image_id, ext)
        folder = self._datastore.label_path(label_tag)
        with FileLock(self._lock_file):
            self._reload_index()
            os.makedirs(folder, exist_ok=True)
            atomic_copy(label_filename, os.path.join(folder, name))
            for other in self._label_files(image_id, label_tag):
                if os.path.basename(other) != name:  # a label saved earlier in another format would shadow this one
                    os.remove(other)
            info = {**(label_info or {}), "ts": int(time.time()), "name": name}
            self._datastore.objects[image_id].labels[label_tag] = DataModel(info=info, ext=ext)
            self._update_datastore_file(lock=False)
        logger.info("saved %s label of %s (%s)", label_tag, image_id, name)
        return image_id

    def _refuse_foreground_on_blank(self, image_id: str, image: str, label_filename: str) -> None:
        """422 for a label with foreground on a blank image: it would teach the model to find the structure in
        nothing. An all-background label is kept: it marks a blank frame as done, so Next Sample stops offering it."""
        if not io.is_blank(io.read_image(image, max_pixels=self.max_pixels)[0]):
            return
        label = label_to_class_indices(io.read_image(label_filename)[0], self.num_classes, "the uploaded label")
        foreground = int(np.count_nonzero(label))
        if foreground:
            raise HTTPException(
                422,
                f"label for image {image_id!r} refused: the image is blank (every pixel has the same value) but the "
                f"label marks {foreground} pixel(s) as foreground; save an empty label to mark a blank image done",
            )

    def get_image_uri(self, image_id: str) -> str:
        # ids come from the index, which only this class writes; a path-like id still never leaves the folder
        return super().get_image_uri(image_id) if _is_plain_name(image_id) else ""

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        return super().get_label_uri(label_id, label_tag) if _is_plain_name(label_id, label_tag) else ""

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        with FileLock(self._lock_file):
            self._reload_index()  # another process (training, scoring) may have written since we read
            obj = self._datastore.objects.get(image_id)
            if not obj:
                raise HTTPException(404, f"image {image_id!r} is not in the datastore")
            obj.image.info.update(info)
            self._update_datastore_file(lock=False)

    def _label_files(self, image_id: str, tag: str) -> list[str]:
        folder = self._datastore.label_path(tag)
        if not os.path.isdir(folder):
            return []
        return [
            os.path.join(folder, f)
            for f in os.listdir(folder)
            if io.image_stem(f) == image_id and os.path.isfile(os.path.join(folder, f))
        ]

    def _reload_index(self) -> None:
        """Re-read the index file if another process changed it (caller holds the lock)."""
        if not os.path.exists(self._datastore_config_path):
            return
        ts = os.stat(self._datastore_config_path).st_mtime
        if ts != self._config_ts:
            with open(self._datastore_config_path) as f:
                self._datastore = LocalDatastoreModel.model_validate_json(f.read())
            self._datastore.base_path = self._datastore_path
            self._config_ts = ts

    def _update_datastore_file(self, lock: bool = True) -> None:
        def write() -> None:
            self._ignore_event_config = True
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            atomic_write_bytes(self._datastore_config_path, lambda f: f.write(text.encode()))
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()


def _is_plain_name(*names: str) -> bool:
    """Whether every name is one file-name component (no separator, no NUL, not ``.`` or ``..``)."""
    return all(
        isinstance(n, str) and n not in ("", ".", "..") and not any(c in n for c in ("/", "\\", "\0")) for n in names
    )


def refusal(
    errors: io.ImageReadError | list[io.ImageReadError], prefix: str = "", shown: dict[str, str] | None = None
) -> HTTPException:
    """The app's one mapping of the library's refusals to an HTTP answer: the errors' status (the largest, so 413
    for an image over the pixel limit wins over 422) and their reasons, with the server's own file names replaced by
    what the client knows them as (``shown``: ``{server path: shown name}``)."""
    errors = errors if isinstance(errors, list) else [errors]
    detail = "; ".join(str(e) for e in errors)
    for path, name in (shown or {}).items():
        detail = detail.replace(path, name)
    return HTTPException(max(e.http_status for e in errors), prefix + detail)
