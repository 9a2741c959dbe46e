"""DistributedDataParallel helpers: one process per GPU under ``torchrun``, a no-op in a single process.

``torchrun --nproc_per_node N -m sscase_monai train ...`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
:func:`setup_distributed` reads them, joins the process group (NCCL on CUDA, Gloo on CPU) and picks this process's
device. Every collective here is also correct (and free) in a single process, so the trainer has one code path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from sscase_monai.inference import resolve_device

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a (possibly one-process) run.

    Attributes:
        world_size: number of processes.
        rank: this process's index, 0 is the main process (the only one writing files and logs).
        local_rank: index on this machine (selects the GPU).
        device: the device this process trains on.
        owns_process_group: whether :func:`setup_distributed` created the process group (and so destroys it).
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_process_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError as e:
        raise ValueError(f"environment variable {name} must be a whole number, got {value!r}") from e


def setup_distributed(device: str = "auto") -> DistributedContext:
    """Join the ``torchrun`` process group when there is one, and choose this process's device.

    Without ``WORLD_SIZE > 1`` (and no process group already set up by the caller) this is a single-process run on
    ``device``. Under DDP, CUDA processes use ``cuda:LOCAL_RANK``; ``device="cpu"`` (or no GPU) uses Gloo on CPU.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (N is ignored under DDP).

    Raises:
        ValueError: CUDA asked for but not available, or more processes than GPUs on this machine.
    """
    wanted = resolve_device(device)
    if wanted.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine (use device 'cpu')")
    if dist.is_available() and dist.is_initialized():
        world_size, rank = dist.get_world_size(), dist.get_rank()
        owns = False
    else:
        world_size, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
        owns = world_size > 1
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size > 1 and wanted.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s): "
                "start at most one process per GPU"
            )
        wanted = torch.device("cuda", local_rank)
    if wanted.type == "cuda" and wanted.index is not None:
        torch.cuda.set_device(wanted)
    if owns:
        backend = "nccl" if wanted.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": wanted} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, **kwargs)
        logger.info("joined %s process group: rank %d of %d on %s", backend, rank, world_size, wanted)
    return DistributedContext(world_size, rank, local_rank, wanted, owns)


def cleanup_distributed(context: DistributedContext) -> None:
    """Leave the process group if :func:`setup_distributed` created it."""
    if context.owns_process_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    """Wait for every process (no-op in one process)."""
    if context.distributed:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Element-wise sum over processes, then rank 0's result everywhere (bitwise identical on every rank)."""
    if not context.distributed:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    dist.broadcast(values, src=0)
    return values


def any_process(flag: bool, context: DistributedContext) -> bool:
    """True in every process when ``flag`` is True in any of them."""
    if not context.distributed:
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=_collective_device(context))
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def broadcast_buffers(model: torch.nn.Module, context: DistributedContext) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every process.

    DDP does this at the start of each forward pass; after an epoch's last step each process still holds the
    statistics of its own last batch, so validation and saved weights would differ between processes without it.
    """
    if not context.distributed:
        return
    for buffer in unwrap(model).buffers():
        dist.broadcast(buffer.data, src=0)


def broadcast_object(value: T | None, context: DistributedContext) -> T:
    """Rank 0's ``value`` (any picklable object) in every process."""
    if not context.distributed:
        return value  # type: ignore[return-value]
    holder = [value if context.is_main else None]
    dist.broadcast_object_list(holder, src=0, device=_collective_device(context))
    return holder[0]  # type: ignore[return-value]


def run_on_main(function: Callable[[], T], context: DistributedContext) -> T:
    """Run ``function`` in the main process only and hand its result to every process.

    An exception in the main process is re-raised in every process (as ``RuntimeError`` naming it on the others), so
    no process is left waiting at a collective.
    """
    result: Any = None
    error: BaseException | None = None
    if context.is_main:
        try:
            result = function()
        except Exception as e:  # re-raised below, after the others have heard of it
            error = e
    if not context.distributed:
        if error is not None:
            raise error
        return result
    outcome = broadcast_object((result, None if error is None else f"{type(error).__name__}: {error}"), context)
    if error is not None:
        raise error
    if outcome[1] is not None:
        raise RuntimeError(f"the main process failed: {outcome[1]}")
    return outcome[0]


def _collective_device(context: DistributedContext) -> torch.device:
    return context.device if dist.get_backend() == "nccl" else torch.device("cpu")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def wrap_for_training(model: torch.nn.Module, context: DistributedContext) -> torch.nn.Module:
    """``DistributedDataParallel`` over the model's trainable parameters, or the model itself in one process.

    Build it after freezing or unfreezing: DDP fixes its parameter set at construction, so each stage gets a new
    wrapper.
    """
    if not context.distributed:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
