"""torch.distributed for the Trainer (docs/design.md#trainer): joining torchrun's process group and
the few collectives training and evaluation need. Outside torchrun every helper is a no-op, so the
Trainer runs one code path for one process and for many."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from lib.cli import UserError
from lib.device import get_device


def init_distributed(device_flag: str) -> torch.device:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on CUDA);
    returns this process's device (``cuda:<local rank>`` on CUDA)."""
    device = get_device(device_flag)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"torchrun --nproc_per_node: local rank {local_rank} but only "
                f"{torch.cuda.device_count()} GPU(s) here; use at most one process per GPU"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def is_distributed() -> bool:
    """Whether this process is one of a torchrun process group."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world_size() -> tuple[int, int]:
    """(this process's rank, number of processes); (0, 1) outside torchrun."""
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def wrap_for_training(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel under torchrun (gradients averaged over processes), else
    ``model`` itself."""
    if not is_distributed():
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def all_reduce(*tensors: torch.Tensor) -> None:
    """Sum each tensor over all processes, in place."""
    if is_distributed():
        for tensor in tensors:
            dist.all_reduce(tensor)


def global_weighted_mean(loss: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """The loss to backpropagate for a process's weighted mean ``loss`` over its share of the
    batch, whose weights sum to ``weight`` (None: a plain mean, which needs nothing, as every share
    has the same size). DDP averages the processes' gradients, so the loss is rescaled by weight x
    world size / the whole batch's weights: the step of one process with the same global batch."""
    if weight is None or not is_distributed():
        return loss
    total = weight.detach().clone()
    dist.all_reduce(total)
    return loss * (weight.detach() * dist.get_world_size() / total)


def first_bad_batch(bad_batch: torch.Tensor) -> int:
    """The first batch with a NaN/inf loss on any process (0: none). Under torchrun every process
    takes part, so all of them stop at the same check instead of one waiting forever in the next
    gradient all-reduce."""
    if not is_distributed():
        return int(bad_batch.item())
    never = torch.iinfo(torch.long).max
    first = torch.where(bad_batch == 0, never, bad_batch).reshape(1)
    dist.all_reduce(first, op=dist.ReduceOp.MIN)
    found = int(first.item())
    return 0 if found == never else found


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Give every process rank ``src``'s buffers (BatchNorm statistics drift apart per process)."""
    if is_distributed():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=src)


def gather_eval(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All processes' eval shards (rank r holds dataset indices r, r+W, ..., as ``EvalShard`` deals
    them), put back in dataset order: (N x 2 logits, N labels), the same on every process."""
    world_size = dist.get_world_size()
    counts = [torch.zeros((), dtype=torch.long, device=labels.device) for _ in range(world_size)]
    dist.all_gather(counts, torch.tensor(labels.shape[0], device=labels.device))
    sizes = torch.stack(counts).tolist()  # one host read for all ranks
    longest, n = max(sizes), sum(sizes)
    pad = longest - labels.shape[0]
    logits = torch.cat([logits, logits.new_zeros((pad, 2))])
    labels = torch.cat([labels, labels.new_zeros(pad)])
    all_logits = [torch.empty_like(logits) for _ in range(world_size)]
    all_labels = [torch.empty_like(labels) for _ in range(world_size)]
    dist.all_gather(all_logits, logits)
    dist.all_gather(all_labels, labels)
    # Position-major order is dataset order; only the last ranks can be one short, so the
    # padding lands at the very end and is cut off.
    return torch.stack(all_logits, 1).reshape(-1, 2)[:n], torch.stack(all_labels, 1).reshape(-1)[:n]
