"""MONAI dictionary transforms for 2-D ultrasound: loading, resizing, denoising, the method's augmentation.

The data path of one labelled image (see :func:`train_transforms`)::

    LoadUltrasoundd      file -> (C, H, W) float32 in [0, 1] + (1, H, W) int64 class indices, geometry kept in meta
    ResizeToInputd       whole image to the network input (aspect ratio ignored, as the method does)
    MedianDenoised       5x5 median on the image
    ---- deterministic above (cacheable), random below ----
    RandPaperAugmentd    one of 8 mask variants (dilate/erode/open/close x 3x3/5x5) x one of 4 geometric variants
                         (original, horizontal flip, vertical flip, 1.2x centre zoom)

The same deterministic preprocessing (load, resize, median) runs at training, validation and inference, so the
network always sees the same kind of input; the method applies the median filter to every training copy. Because the
median runs before the geometric variants here (so it can be cached), it commutes exactly with the flips and almost
exactly with the zoom.

Predictions go back to the original image grid with :func:`restore_to_original`; each loaded item keeps what that
needs in its metadata (``"geometry"``, ``"original_shape"``, ``"spatial_shape"``). Batches of validation/inference
items from files of different kinds (a 2-D PNG beside a ``W x H x 1`` NIfTI) do not collate, their geometry lists
differ in length: use batch size 1 or a list collate there (training batches carry no metadata).

Where each part lives: ``loading`` (files and arrays -> network layout), ``resizing`` (to the input size and back to
the image's grid), ``denoising`` (the median filter), ``augmentation`` (mask morphology, flips, zoom) and
``pipelines`` (the lists above). Every public name is importable from ``sscase_monai.transforms``.

Inside ``Compose``, MONAI re-raises a transform's error as ``RuntimeError`` with the original (``ImageReadError`` or
``ValueError`` naming the file) as ``__cause__``; ``sscase_monai.data.validate_labelled_pairs`` reports bad training
files directly, before training.
"""

from sscase_monai.transforms.augmentation import (
    CENTRE_ZOOM,
    GEOMETRIC_VARIANTS,
    MORPHOLOGY_KERNEL_SIZES,
    MORPHOLOGY_OPERATIONS,
    RandCentreZoomd,
    RandMaskMorphologyd,
    RandPaperAugmentd,
    perturb_mask,
)
from sscase_monai.transforms.denoising import MedianDenoised, median_denoise
from sscase_monai.transforms.loading import (
    LUMINANCE_WEIGHTS,
    LoadUltrasoundd,
    image_to_channel_first,
    label_to_class_indices,
    scale_intensity_to_unit,
)
from sscase_monai.transforms.pipelines import (
    build_preprocess,
    build_train_augment,
    infer_transforms,
    train_transforms,
    val_transforms,
)
from sscase_monai.transforms.resizing import (
    DEFAULT_INPUT_SIZE,
    INPUT_MULTIPLE,
    InputSize,
    ResizeToInputd,
    format_input_size,
    input_shape,
    normalize_input_size,
    original_shape_of,
    parse_input_size,
    resize_probabilities_to,
    restore_to_original,
)

__all__ = [
    "CENTRE_ZOOM",
    "DEFAULT_INPUT_SIZE",
    "GEOMETRIC_VARIANTS",
    "INPUT_MULTIPLE",
    "InputSize",
    "LUMINANCE_WEIGHTS",
    "MORPHOLOGY_KERNEL_SIZES",
    "MORPHOLOGY_OPERATIONS",
    "LoadUltrasoundd",
    "MedianDenoised",
    "RandCentreZoomd",
    "RandMaskMorphologyd",
    "RandPaperAugmentd",
    "ResizeToInputd",
    "build_preprocess",
    "build_train_augment",
    "format_input_size",
    "image_to_channel_first",
    "infer_transforms",
    "input_shape",
    "label_to_class_indices",
    "median_denoise",
    "normalize_input_size",
    "original_shape_of",
    "parse_input_size",
    "perturb_mask",
    "resize_probabilities_to",
    "restore_to_original",
    "scale_intensity_to_unit",
    "train_transforms",
    "val_transforms",
]
