"""The transform pipelines of training, validation and inference, as lists of MONAI dictionary transforms."""

from __future__ import annotations

from collections.abc import Sequence

from monai.config import KeysCollection
from monai.transforms import Compose, EnsureTyped, RandCoarseDropoutd, Transform
from monai.utils import ensure_tuple

from sscase_monai import io
from sscase_monai.transforms.augmentation import (
    CENTRE_ZOOM,
    CUTOUT_HOLES,
    CUTOUT_SIDE_FRACTION,
    GEOMETRIC_VARIANTS,
    MORPHOLOGY_KERNEL_SIZES,
    MORPHOLOGY_OPERATIONS,
    RandPaperAugmentd,
)
from sscase_monai.transforms.denoising import MedianDenoised
from sscase_monai.transforms.loading import LoadUltrasoundd
from sscase_monai.transforms.resizing import DEFAULT_INPUT_SIZE, InputSize, ResizeToInputd, input_shape


def build_preprocess(
    input_size: InputSize = DEFAULT_INPUT_SIZE,
    channels: int = 3,
    num_classes: int = 2,
    denoise: bool = True,
    keys: KeysCollection = ("image", "label"),
    image_key: str = "image",
    label_key: str = "label",
    max_pixels: int = io.DEFAULT_MAX_PIXELS,
    allow_missing_keys: bool = False,
) -> list[Transform]:
    """The deterministic part, identical at training, validation and inference: load -> resize -> median denoise.

    Its output can be cached (``monai.data.CacheDataset``).

    Args:
        input_size: network input side, or ``(height, width)``; each a multiple of 32.
        channels: network input channels (1 or 3).
        num_classes: classes including background.
        denoise: apply the 5x5 median (the method does; keep the same setting at inference).
        keys: keys to load (``("image",)`` for inference).
        image_key: the image key.
        label_key: the label key.
        max_pixels: refuse larger images.
        allow_missing_keys: skip absent keys.

    Returns:
        A list of transforms, to extend or pass to ``Compose``.
    """
    shape = input_shape(input_size)
    keys = ensure_tuple(keys)
    image_keys = [key for key in keys if key != label_key]
    transforms: list[Transform] = [
        LoadUltrasoundd(keys, image_key, label_key, channels, num_classes, max_pixels, allow_missing_keys),
        ResizeToInputd(keys, shape, label_key, allow_missing_keys=allow_missing_keys),
    ]
    if denoise and image_keys:
        transforms.append(MedianDenoised(image_keys, kernel_size=5, allow_missing_keys=allow_missing_keys))
    return transforms


def build_train_augment(
    keys: KeysCollection = ("image", "label"),
    label_key: str = "label",
    operations: Sequence[str] = MORPHOLOGY_OPERATIONS,
    kernel_sizes: Sequence[int] = MORPHOLOGY_KERNEL_SIZES,
    geometric_variants: Sequence[str] = GEOMETRIC_VARIANTS,
    zoom: float = CENTRE_ZOOM,
    mask_prob: float = 1.0,
    cutout_prob: float = 0.0,
    input_size: InputSize = DEFAULT_INPUT_SIZE,
) -> list[Transform]:
    """The random part of training: the method's augmentation (:class:`RandPaperAugmentd`), one draw per call, and
    optionally occlusion.

    Occlusion (``cutout_prob`` > 0; not the method's) blanks :data:`CUTOUT_HOLES` rectangles of the image with
    sides of :data:`CUTOUT_SIDE_FRACTION` of the input's sides (MONAI's ``RandCoarseDropoutd``, filled with 0, the
    label kept), so the network learns to complete a boundary it cannot see, e.g. a skull wall in acoustic shadow.

    It ends by turning MetaTensors into plain tensors: training batches need no metadata, and items from files of
    different kinds (a 2-D PNG beside a ``W x H x 1`` NIfTI) have geometry lists of different lengths that would not
    collate. Seed it with ``Compose(...).set_random_state(seed)``, or per item through
    ``sscase_monai.data.RepeatDataset``.
    """
    if not 0.0 <= cutout_prob <= 1.0:
        raise ValueError(f"cutout_prob must be within [0, 1], got {cutout_prob!r}")
    keys = ensure_tuple(keys)
    transforms: list[Transform] = [
        RandPaperAugmentd(
            keys,
            label_key=label_key,
            operations=operations,
            kernel_sizes=kernel_sizes,
            geometric_variants=geometric_variants,
            zoom=zoom,
            mask_prob=mask_prob,
        )
    ]
    if cutout_prob > 0:
        smallest, largest = (
            [max(1, round(f * side)) for side in input_shape(input_size)] for f in CUTOUT_SIDE_FRACTION
        )
        transforms.append(
            RandCoarseDropoutd(
                [key for key in keys if key != label_key],
                holes=CUTOUT_HOLES[0],
                max_holes=CUTOUT_HOLES[1],
                spatial_size=smallest,
                max_spatial_size=largest,
                fill_value=0.0,
                prob=cutout_prob,
            )
        )
    transforms.append(EnsureTyped(keys, data_type="tensor", track_meta=False))
    return transforms


def train_transforms(
    input_size: InputSize = DEFAULT_INPUT_SIZE, channels: int = 3, num_classes: int = 2, denoise: bool = True
) -> Compose:
    """Preprocessing + the method's augmentation, for ``{"image": path, "label": path}`` items."""
    return Compose(build_preprocess(input_size, channels, num_classes, denoise) + build_train_augment())


def val_transforms(
    input_size: InputSize = DEFAULT_INPUT_SIZE, channels: int = 3, num_classes: int = 2, denoise: bool = True
) -> Compose:
    """Preprocessing only, for labelled ``{"image": path, "label": path}`` items."""
    return Compose(build_preprocess(input_size, channels, num_classes, denoise))


def infer_transforms(
    input_size: InputSize = DEFAULT_INPUT_SIZE, channels: int = 3, denoise: bool = True, image_key: str = "image"
) -> Compose:
    """Preprocessing of ``{"image": path}`` items for inference (same as training's, so inputs look alike)."""
    return Compose(build_preprocess(input_size, channels, denoise=denoise, keys=(image_key,), image_key=image_key))
