"""Training data in memory: preprocess every image once, then draw the method's augmented samples from the cache.

The deterministic part (load -> resize -> 5x5 median, :func:`sscase_monai.transforms.build_preprocess`) runs once per
image and is kept as plain tensors: 256x256 RGB float32 is 0.8 MB per image, a ``uint8`` label 64 kB. Each epoch
then draws ``samples_per_image`` augmented copies of each (:class:`sscase_monai.data.RepeatDataset` +
:func:`sscase_monai.transforms.build_train_augment`), sharded over DDP processes by a ``DistributedSampler`` (which,
with one replica, is simply a seeded shuffle: one code path for one or many processes).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from torch.utils.data import DataLoader, DistributedSampler

from sscase_monai.data import RepeatDataset
from sscase_monai.model_files import ModelSpec
from sscase_monai.transforms import build_train_augment
from sscase_monai.transforms.resizing import DEFAULT_INPUT_SIZE, InputSize

logger = logging.getLogger(__name__)

CachedItem = dict[str, torch.Tensor]


def _plain(value: Any) -> torch.Tensor:
    return value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)


def preprocess_items(
    items: Sequence[Mapping[str, Any]], spec: ModelSpec, labelled: bool = True, workers: int = 0
) -> list[CachedItem]:
    """Load, resize and denoise every item once, as the network's input size.

    Args:
        items: ``{"image": path, "label": path}`` (``labelled``) or ``{"image": path}`` items.
        spec: input size, channels, classes and denoising of the model being trained.
        labelled: whether to load the labels too.
        workers: threads (the median filter and image decoding release the GIL); 0 or 1 runs in this thread.

    Returns:
        ``{"image": (C, H, W) float32, "label": (1, H, W) uint8}`` per item (no ``"label"`` when unlabelled).
    """
    keys = ("image", "label") if labelled else ("image",)
    transform = Compose(spec.build_preprocess(keys=keys))

    def one(item: Mapping[str, Any]) -> CachedItem:
        data = transform({key: str(item[key]) for key in keys})
        cached = {"image": _plain(data["image"]).contiguous()}
        if labelled:
            cached["label"] = _plain(data["label"]).to(torch.uint8).contiguous()
        return cached

    if workers > 1 and len(items) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, items))
    return [one(item) for item in items]


def build_train_loader(
    cache: Sequence[CachedItem],
    samples_per_image: int,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    world_size: int = 1,
    rank: int = 0,
    pin_memory: bool = False,
    cutout_prob: float = 0.0,
    input_size: InputSize = DEFAULT_INPUT_SIZE,
) -> tuple[DataLoader, RepeatDataset, DistributedSampler]:
    """A loader of augmented training batches; call ``set_epoch`` on the dataset and the sampler every epoch.

    A last batch of a single sample is dropped (batch norm cannot train on it meaningfully); every other sample is
    used once per epoch.

    Workers are not persistent on purpose: a persistent worker keeps its own copy of the dataset, and would not see
    ``RepeatDataset.set_epoch``. With ``fork`` (Linux) a new worker shares the cache without copying it.

    ``cutout_prob`` and ``input_size`` set the optional occlusion augmentation
    (:func:`sscase_monai.transforms.build_train_augment`).

    Returns:
        ``(loader, dataset, sampler)``.
    """
    dataset = RepeatDataset(
        cache,
        transform=Compose(build_train_augment(cutout_prob=cutout_prob, input_size=input_size)),
        samples_per_image=samples_per_image,
        seed=seed,
    )
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False)
    # a last batch of one image would train batch norm on a single image's statistics (and fails at 1x1 features)
    lone_last = len(sampler) > 1 and len(sampler) % batch_size == 1
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=lone_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),
    )
    return loader, dataset, sampler


def batches(items: Sequence[CachedItem], batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Cached items stacked into batches of at most ``batch_size`` (validation: fixed order, no augmentation)."""
    out = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        out.append({key: torch.stack([item[key] for item in chunk]) for key in chunk[0]})
    return out
