"""Image/label folders: discovery, pairing, validation before training, exam-level splits, per-epoch repetition.

``sscase-monai train --images DIR --labels DIR`` goes through :func:`find_images`, :func:`pair_images_with_labels`
and :func:`validate_labelled_pairs` before any training starts, so a bad file is reported with its name up front
instead of failing an epoch later. :class:`RepeatDataset` draws the method's ~32 augmented samples per labelled image
per epoch without materialising them, reproducibly.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import Randomizable
from monai.utils import MAX_SEED
from torch.utils.data import Dataset

from sscase_monai import io
from sscase_monai.transforms import image_to_channel_first, label_to_class_indices

logger = logging.getLogger(__name__)

_SHOWN = 5
"""How many file names an error lists before summarising the rest as a count."""

_HC18_EXAM = re.compile(r"^(\d+)_\d*HC$", re.IGNORECASE)


class DataValidationError(ValueError):
    """Labelled data that cannot be trained on; :attr:`problems` lists every problem, each naming its file(s)."""

    def __init__(self, problems: Sequence[str], checked: int) -> None:
        self.problems = list(problems)
        self.checked = checked
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in {checked} labelled image(s):\n{lines}")

    def __reduce__(self):  # picklable across worker processes despite the custom constructor
        return type(self), (self.problems, self.checked)


def _names(paths: Sequence[Any]) -> str:
    names = [Path(p).name for p in paths]
    shown = ", ".join(names[:_SHOWN])
    return f"{shown} and {len(names) - _SHOWN} more" if len(names) > _SHOWN else shown


def find_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in ``folder`` (not sub-folders), sorted by name.

    Files are recognised by extension (:func:`sscase_monai.io.is_image_file`); hidden files (``.name``, such as
    macOS ``._name.png`` resource forks) are skipped.

    Raises:
        FileNotFoundError: ``folder`` does not exist or is not a folder.
        ValueError: it holds no image files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder" if not folder.exists() else f"{folder}: not a folder")
    images = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and io.is_image_file(p))
    if not images:
        raise ValueError(f"{folder}: no image files (expected one of {', '.join(io.IMAGE_EXTENSIONS)})")
    return images


def _by_stem(paths: Sequence[Path], folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    clashes: list[str] = []
    for path in paths:
        stem = io.image_stem(path)
        if stem in found:
            clashes.append(f"{found[stem].name} and {path.name}")
        found.setdefault(stem, path)
    if clashes:
        raise ValueError(f"{folder}: several files share a name, so they cannot be matched: {'; '.join(clashes)}")
    return found


def pair_images_with_labels(images_dir: str | os.PathLike, labels_dir: str | os.PathLike) -> list[dict[str, str]]:
    """Match every image to the label with the same stem (``a.png`` <-> ``a.nii.gz``).

    Labels without an image are logged as a warning and left out.

    Args:
        images_dir: folder of images.
        labels_dir: folder of labels.

    Returns:
        ``[{"image": path, "label": path}, ...]`` in image name order.

    Raises:
        FileNotFoundError: a folder is missing.
        ValueError: a folder holds no images, two files in one folder share a stem, or images have no label (the
            message names the first few and the count).
    """
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    images = _by_stem(find_images(images_dir), images_dir)
    labels = _by_stem(find_images(labels_dir), labels_dir)
    unlabelled = [path for stem, path in images.items() if stem not in labels]
    if unlabelled:
        raise ValueError(
            f"{len(unlabelled)} of {len(images)} image(s) in {images_dir} have no label in {labels_dir}: "
            f"{_names(unlabelled)} (labels match images by file name without extension)"
        )
    orphans = [path for stem, path in labels.items() if stem not in images]
    if orphans:
        logger.warning(
            "%d label(s) in %s have no image in %s and are ignored: %s",
            len(orphans),
            labels_dir,
            images_dir,
            _names(orphans),
        )
    return [{"image": str(path), "label": str(labels[stem])} for stem, path in images.items()]


def split_studies_folder(studies: str | os.PathLike) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """A MONAI Label studies folder (images at its top level, final labels in ``labels/final`` with the same file
    stem) as labelled ``{"image", "label"}`` pairs and unlabelled ``{"image"}`` items.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: it holds no images.
    """
    studies = Path(studies)
    images = find_images(studies)
    final = studies / "labels" / "final"
    labels = _by_stem(find_images(final), final) if final.is_dir() and any(final.iterdir()) else {}
    labelled = [{"image": str(p), "label": str(labels[io.image_stem(p)])} for p in images if io.image_stem(p) in labels]
    unlabelled = [{"image": str(p)} for p in images if io.image_stem(p) not in labels]
    return labelled, unlabelled


def labelled_pair_problems(
    image_path: str, label_path: str, num_classes: int = 2, max_pixels: int = io.DEFAULT_MAX_PIXELS
) -> list[io.ImageReadError]:
    """Every problem of one image/label pair (empty when usable), each a refusal with its HTTP status."""
    problems: list[io.ImageReadError] = []
    image_shape = label_shape = None
    try:
        image, _ = io.read_image(image_path, max_pixels=max_pixels)
        image_to_channel_first(image, channels=1, source=image_path)  # channel layout and transparency checks
        image_shape = image.shape[:2]
    except io.ImageReadError as e:
        problems.append(io.ImageReadError(f"image {e}", e.http_status))
    try:
        label, _ = io.read_image(label_path, max_pixels=max_pixels)
        label_shape = label.shape[:2]
        label_to_class_indices(label, num_classes, source=label_path)
    except ValueError as e:  # ImageReadError included
        problems.append(io.ImageReadError(f"label {e}", getattr(e, "http_status", 422)))
    if image_shape is not None and label_shape is not None and image_shape != label_shape:
        problems.append(
            io.ImageReadError(
                f"label {label_path} has (H, W) = {tuple(label_shape)} but its image {image_path} has "
                f"(H, W) = {tuple(image_shape)}"
            )
        )
    return problems


def check_labelled_pair(
    image_path: str, label_path: str, num_classes: int = 2, max_pixels: int = io.DEFAULT_MAX_PIXELS
) -> list[str]:
    """Every problem of one image/label pair as text (empty when usable): see :func:`validate_labelled_pairs`."""
    return [str(p) for p in labelled_pair_problems(image_path, label_path, num_classes, max_pixels)]


def validate_labelled_pairs(
    pairs: Sequence[Mapping[str, str]], num_classes: int = 2, max_pixels: int = io.DEFAULT_MAX_PIXELS
) -> None:
    """Read every image and label once and report every problem together, before training starts.

    Checks: the file reads as a 2-D image (:func:`sscase_monai.io.read_image`), the image's channels are usable (no
    transparency), label values are class indices in ``0..num_classes-1`` (``{0, 255}`` allowed for binary), and
    the label has its image's size.

    Args:
        pairs: ``{"image": path, "label": path}`` items (as :func:`pair_images_with_labels` returns).
        num_classes: classes including background.
        max_pixels: refuse larger images.

    Raises:
        DataValidationError: one error listing every problem, each with its file name(s).
    """
    problems: list[str] = []
    for pair in pairs:
        problems += check_labelled_pair(str(pair["image"]), str(pair["label"]), num_classes, max_pixels)
    if problems:
        raise DataValidationError(problems, len(pairs))
    logger.info("checked %d labelled image(s): all usable", len(pairs))


def exam_id(path: str | os.PathLike) -> str:
    """The exam an image belongs to: ``NNN`` for HC18-style names (``NNN_HC``, ``NNN_2HC``), else the file stem."""
    stem = io.image_stem(path)
    match = _HC18_EXAM.match(stem)
    return match.group(1) if match else stem


def _item_path(item: Any) -> str:
    return str(item["image"]) if isinstance(item, Mapping) else str(item)


def split_by_exam(items: Sequence[Any], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[Any], list[Any]]:
    """Split items into training and validation so that all images of one exam land in the same split.

    Exams (:func:`exam_id`) are shuffled with ``seed``; in that order, an exam goes to validation when it brings the
    validation count closer to ``round(val_fraction * len(items))`` (so it ends within about one exam of it). At
    least one exam goes to validation when ``val_fraction > 0`` and there are two exams or more, and at least one
    image stays for training. Each split keeps the input order.

    Args:
        items: image paths, or dicts with an ``"image"`` key.
        val_fraction: share of images for validation, in ``[0, 1)``.
        seed: shuffling seed.

    Returns:
        ``(train_items, val_items)``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    exams: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        exams.setdefault(exam_id(_item_path(item)), []).append(index)
    order = sorted(exams)
    random.Random(seed).shuffle(order)
    target = round(val_fraction * len(items))
    val_indices: set[int] = set()
    for exam in order:  # take an exam when it brings validation closer to the target
        size = len(exams[exam])
        if abs(len(val_indices) + size - target) < abs(len(val_indices) - target) and (
            len(val_indices) + size < len(items)  # training keeps at least one image
        ):
            val_indices.update(exams[exam])
    if not val_indices and val_fraction > 0 and len(exams) > 1:
        val_indices.update(exams[min(order, key=lambda exam: len(exams[exam]))])
    train = [item for i, item in enumerate(items) if i not in val_indices]
    val = [item for i, item in enumerate(items) if i in val_indices]
    return train, val


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A random seed for one item of one epoch, well mixed from ``(seed, epoch, index)`` and the same in every
    process (unlike ``hash``)."""
    return int(np.random.SeedSequence((seed, epoch, index)).generate_state(1, dtype=np.uint32)[0]) % MAX_SEED


class RepeatDataset(Dataset):
    """Each base item ``samples_per_image`` times per epoch, each draw with its own reproducible randomness.

    Item ``i`` is ``transform(base[i % len(base)])`` with the transform's random state seeded from
    :func:`item_seed` ``(seed, epoch, i)``: the epoch's samples are the same whatever the number of DataLoader
    workers or the order they are fetched in, different items and epochs get different draws, and nothing is
    materialised. Call :meth:`set_epoch` before each epoch (like ``DistributedSampler.set_epoch``).

    Args:
        base: the deterministic, possibly cached items (e.g. a ``monai.data.CacheDataset`` of the preprocessing).
        transform: the random part (e.g. ``Compose(build_train_augment())``); ``None`` repeats items unchanged.
        samples_per_image: draws per base item per epoch (the method: 32).
        seed: the run's seed.
    """

    def __init__(
        self,
        base: Sequence[Any],
        transform: Callable[[Any], Any] | None = None,
        samples_per_image: int = 32,
        seed: int = 0,
    ) -> None:
        if samples_per_image < 1:
            raise ValueError(f"samples_per_image must be at least 1, got {samples_per_image!r}")
        self.base = base
        self.transform = transform
        self.samples_per_image = samples_per_image
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose draws the following items come from."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_image * len(self.base)

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index %= len(self)
        item = self.base[index % len(self.base)]
        if self.transform is None:
            return item
        if isinstance(self.transform, Randomizable):
            self.transform.set_random_state(seed=item_seed(self.seed, self.epoch, index))
        return self.transform(item)
