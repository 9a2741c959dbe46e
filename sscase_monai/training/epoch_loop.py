"""The inner loop of training: one epoch of optimisation steps, and one validation pass in eval mode.

:class:`EpochLoop` owns what every step needs and nothing about stages: the loss, the optional consistency term on
two views of unlabelled images, mixed precision (autocast and the gradient scaler) and the memory format. The stage
logic (:mod:`sscase_monai.training.trainer`) hands it a network, an optimizer and a loader. Under
DistributedDataParallel every process runs it on its own shard; the sums it returns are over all processes.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from sscase_monai.data import item_seed
from sscase_monai.losses import ConsistencyLoss, SegmentationLoss
from sscase_monai.metrics import dice_per_image
from sscase_monai.probabilities import class_indices, probabilities_from_logits
from sscase_monai.training.config import TrainingConfig
from sscase_monai.training.distributed import DistributedContext, all_reduce_sum, any_process, unwrap
from sscase_monai.training.loaders import CachedItem
from sscase_monai.tta import apply_view, invert_view

CONSISTENCY_VIEWS: tuple[str, ...] = ("identity", "hflip", "vflip", "rot180")
"""The consistency term's views of an unlabelled image (each one its own inverse; see :mod:`sscase_monai.tta`)."""


@dataclass(frozen=True)
class EpochTraining:
    """What one training epoch did, summed over processes.

    Attributes:
        loss: mean training loss (segmentation + consistency) per image.
        consistency_loss: mean consistency term per image (0 when off).
        images: labelled images trained on.
        seconds: wall time of the training steps (this process).
    """

    loss: float
    consistency_loss: float
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)


@dataclass(frozen=True)
class ValidationResult:
    """One validation pass over all processes' shards (eval mode, no augmentation).

    Attributes:
        loss: mean validation loss per image (what early stopping and the LR schedule watch).
        dice: mean per-image Dice at the network's input size (foreground classes).
    """

    loss: float
    dice: float


class EpochLoop:
    """Training steps and validation for one network's settings.

    Args:
        config: the run's settings (spec, AMP, memory format, consistency weight, seed, progress bars).
        context: the process's device and DDP rank.
        unlabeled_cache: preprocessed unlabelled images for the consistency term (unused when it is off).
        should_stop: asked before every step; ``None``: never stop (and no per-step all-reduce under DDP).
    """

    def __init__(
        self,
        config: TrainingConfig,
        context: DistributedContext,
        unlabeled_cache: Sequence[CachedItem] = (),
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.context = context
        self.unlabeled_cache = list(unlabeled_cache)
        self.should_stop = should_stop
        out_channels = config.spec.out_channels
        self.num_classes = config.spec.num_classes
        self.loss_fn = SegmentationLoss(out_channels)
        activation = "sigmoid" if out_channels == 1 else "softmax"
        self.consistency_fn = ConsistencyLoss(config.consistency_weight, activation=activation)
        self.amp_dtype: torch.dtype | None = None
        if config.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

    @property
    def device(self) -> torch.device:
        return self.context.device

    @property
    def channels_last(self) -> bool:
        """Channels-last memory format: the setting, or by default on CPU only."""
        setting = self.config.channels_last
        return self.device.type == "cpu" if setting is None else bool(setting)

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model on this loop's device, in its memory format."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_epoch(
        self,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: torch.utils.data.DataLoader,
        key: int,
        description: str = "epoch",
    ) -> EpochTraining | None:
        """One pass over the loader's samples; None when ``should_stop`` asked to stop (the epoch is discarded).

        Args:
            network: the (possibly DDP-wrapped) network, put in train mode here.
            optimizer: its optimizer.
            loader: the epoch's augmented batches.
            key: the epoch's random key (stage and epoch): the loader's shuffling and the consistency views are drawn
                from ``(seed, key, rank)``, so a resumed run draws what an uninterrupted one would.
            description: progress bar label.
        """
        network.train()
        generator = torch.Generator().manual_seed(item_seed(self.config.seed, key, 1000 + self.context.rank))
        loader.generator.manual_seed(item_seed(self.config.seed, key, 2000))
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        consistency_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        images = 0
        show = self.config.progress and self.context.is_main and sys.stderr.isatty()
        progress = tqdm(loader, desc=description, unit="batch", leave=False, disable=not show)
        start = time.perf_counter()
        for step, batch in enumerate(progress):
            if self.should_stop is not None and any_process(self.should_stop(), self.context):
                progress.close()
                return None
            loss, consistency, count = self.train_step(network, optimizer, batch, generator)
            loss_sum += loss * count
            consistency_sum += consistency * count
            images += count
            if show and step % 10 == 0:
                progress.set_postfix(loss=f"{float(loss_sum) / images:.4f}")
        progress.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        totals = torch.stack([loss_sum, consistency_sum, torch.tensor(float(images), device=self.device)])
        totals = all_reduce_sum(totals.to(torch.float64), self.context)
        images = int(totals[2].item())
        return EpochTraining(float(totals[0]) / max(images, 1), float(totals[1]) / max(images, 1), images, seconds)

    def train_step(
        self,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        batch: Mapping[str, torch.Tensor],
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One optimisation step on a batch; ``(loss, consistency term, labelled images)``."""
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True).long()
        count = images.shape[0]
        views = self._consistency_views(count, generator)
        inputs = images if views is None else torch.cat([images, views[0], views[1]])
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            logits = network(inputs)
        logits = logits.float()
        loss = self.loss_fn(logits[:count], labels)
        consistency = torch.zeros((), device=self.device)
        if views is not None:
            view_a, view_b = views[2], views[3]
            unlabeled = (logits.shape[0] - count) // 2
            aligned_a = invert_view(view_a, logits[count : count + unlabeled])
            aligned_b = invert_view(view_b, logits[count + unlabeled :])
            consistency = self.consistency_fn(aligned_a, aligned_b)
            loss = loss + consistency
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return loss.detach(), consistency.detach(), count

    def _consistency_views(
        self, count: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, str, str] | None:
        """A batch of unlabelled images as two different views, and the two views' names."""
        if not self.unlabeled_cache or self.config.consistency_weight <= 0:
            return None
        indices = torch.randint(len(self.unlabeled_cache), (count,), generator=generator).tolist()
        images = torch.stack([self.unlabeled_cache[i]["image"] for i in indices]).to(self.device, non_blocking=True)
        first, second = (int(i) for i in torch.randperm(len(CONSISTENCY_VIEWS), generator=generator)[:2])
        view_a, view_b = CONSISTENCY_VIEWS[first], CONSISTENCY_VIEWS[second]
        return apply_view(view_a, images), apply_view(view_b, images), view_a, view_b

    @torch.no_grad()
    def validate(self, model: torch.nn.Module, batches: Sequence[Mapping[str, torch.Tensor]]) -> ValidationResult:
        """Validation loss and per-image Dice over all processes' shards (eval mode, the unwrapped network)."""
        model = unwrap(model)
        model.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, Dice sum, images
        for batch in batches:
            images = batch["image"].to(self.device, non_blocking=True)
            labels = batch["label"].to(self.device, non_blocking=True).long()
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                logits = model(images)
            logits = logits.float()
            count = images.shape[0]
            predicted = class_indices(probabilities_from_logits(logits), dim=1, keepdim=True)
            totals[0] += float(self.loss_fn(logits, labels)) * count
            totals[1] += float(dice_per_image(predicted, labels, self.num_classes).sum())
            totals[2] += count
        totals = all_reduce_sum(totals, self.context)
        images = max(float(totals[2]), 1.0)
        return ValidationResult(loss=float(totals[0]) / images, dice=float(totals[1]) / images)
