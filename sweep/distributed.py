"""Data parallelism: one process per device, started by torchrun or by SLURM through submitit,
joined in a torch.distributed process group. Rank 0 keeps the run's records.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from sweep.errors import ConfigError

# torch is imported where several ranks need it, not here: a single process (the usual case)
# joins no group, and sweep.train checks its config before loading torch (~2 s).
if TYPE_CHECKING:
    import torch
    from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    """This process's place among the ranks of one run (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "ddp"  # train.data_parallel: ddp (replicated) or fsdp (sharded)

    @property
    def is_main(self) -> bool:
        """Whether this rank writes the run's records, checkpoints and console output."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether there are other ranks to talk to."""
        return self.world_size > 1

    @property
    def sharded(self) -> bool:
        """Whether each rank holds only a shard of the weights and optimizer state (FSDP)."""
        return self.enabled and self.strategy == "fsdp"

    def say(self, message: str) -> None:
        """print, on rank 0 only: one rank speaks for the run."""
        if self.is_main:
            print(message)

    def share(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch (its first dimension)."""
        if not self.enabled:
            return batch
        per_rank = batch.shape[0] // self.world_size
        return batch[self.rank * per_rank : (self.rank + 1) * per_rank]

    def mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average `tensor` over the ranks, in place; every rank then holds the same value."""
        if self.enabled:
            import torch.distributed as torch_dist

            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
            tensor /= self.world_size
        return tensor

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place."""
        if self.enabled:
            import torch.distributed as torch_dist

            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor

    def from_main(self, value: T) -> T:
        """Rank 0's `value` on every rank: decisions that rest on one rank's clock or files."""
        if not self.enabled:
            return value
        import torch.distributed as torch_dist

        box = [value]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model as the training step calls it: DistributedDataParallel across ranks, or,
        sharded, the model itself with each block (then the rest) under FSDP2's fully_shard."""
        if not self.enabled:
            return model
        if self.sharded:
            from torch.distributed.fsdp import fully_shard

            for block in model.blocks:
                fully_shard(block)
            fully_shard(model)
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )


SINGLE = Distributed()


def no_sync(model: nn.Module) -> Callable[[], contextlib.AbstractContextManager]:
    """A context factory that skips the gradient all-reduce (DDP) or reduce-scatter (FSDP) for
    all micro-batches of a step but its last; a plain nullcontext for a single process."""
    inner = getattr(model, "_orig_mod", model)  # torch.compile wraps the DDP module
    if hasattr(inner, "no_sync"):
        return inner.no_sync
    if hasattr(inner, "set_requires_gradient_sync"):

        @contextlib.contextmanager
        def fsdp_no_sync() -> Iterator[None]:
            inner.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                inner.set_requires_gradient_sync(True)

        return fsdp_no_sync
    return contextlib.nullcontext


def full_states(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The sharded model's and optimizer's whole state dicts, gathered onto rank 0's CPU (the
    optimizer's keyed by parameter name). Every rank must call it; the others get empty dicts."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(model, optimizer, options=options)


def load_full_states(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict
) -> None:
    """Load whole state dicts (as full_states gave them; every rank read the same checkpoint)
    into a sharded model and its optimizer: each rank keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(
        model,
        optimizer,
        model_state_dict=model_state,
        optim_state_dict=optim_state,
        options=StateDictOptions(full_state_dict=True),
    )


def _submitit_tasks() -> int:
    """How many tasks the submitit job this process runs in has (0 outside submitit)."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return 0
    import submitit

    return submitit.JobEnvironment().num_tasks


def init_distributed(device: str, strategy: str = "ddp") -> Distributed:
    """Join the process group that torchrun (RANK, WORLD_SIZE, ... in the environment) or a
    submitit job with several tasks (SLURM's tasks_per_node x nodes) describes; SINGLE else.

    `device` is train.device: NCCL for CUDA, gloo for the CPU (which tests use); `strategy`
    is train.data_parallel (ddp or fsdp).
    """
    if "RANK" not in os.environ and _submitit_tasks() > 1:
        from submitit.helpers import TorchDistributedEnvironment

        # Each SLURM task is one rank: no torchrun inside a submitit job.
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    import torch
    import torch.distributed as torch_dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    # A CUDA device asked for on a machine without one is refused by plan_run (resolve_hardware).
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"rank {rank} has LOCAL_RANK={local_rank} but this node has "
                f"{torch.cuda.device_count()} GPUs: start at most that many processes per node"
            )
        torch.cuda.set_device(local_rank)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Distributed(
        rank=rank, world_size=world_size, local_rank=local_rank, strategy=strategy
    )


def leave(dist: Distributed) -> None:
    """Leave the process group init_distributed joined (nothing for a single process)."""
    if not dist.enabled:
        return
    import torch.distributed as torch_dist

    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def check_batch(sequences: int, dist: Distributed) -> None:
    """ConfigError unless a step's `sequences` split evenly over the ranks."""
    if sequences % dist.world_size:
        raise ConfigError(
            f"a step's batch of {sequences} sequences does not split over {dist.world_size} "
            "ranks: set train.batch_tokens to a multiple of the rank count x train.seq_len, or "
            "start a number of processes that divides it"
        )


def rank_device(device: str, dist: Distributed) -> str:
    """train.device as this rank uses it: `auto`/`cuda` become its own GPU, cuda:<local rank>."""
    if not (dist.enabled and device in ("auto", "cuda")):
        return device
    import torch

    return f"cuda:{dist.local_rank}" if torch.cuda.is_available() else device

