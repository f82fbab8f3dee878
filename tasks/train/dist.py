"""Distributed backends behind one interface: single process, PyTorch DDP, Horovod.

Learning-rate rule: `batch_size` is the *global* batch and stays fixed whatever the worker
count (each worker takes batch_size / workers of it), so `learning_rate` applies unchanged.
Growing the global batch is a config change, and then the linear scaling rule is the user's
call: scale learning_rate by new/old global batch.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch


@dataclass
class Backend:
    """Single process: the identity of every collective."""

    name: str = "single"
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer
             ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        return model, optimizer

    def broadcast_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        resumed: bool) -> None:
        """Make every rank start from rank 0's parameters (and, after a resume, optimizer
        state; a fresh state is identical on every rank by construction)."""

    def synchronize(self, optimizer: torch.optim.Optimizer) -> None:
        """Finish gradient averaging before clipping (DDP already averaged in backward)."""

    def step_context(self, optimizer: torch.optim.Optimizer) -> AbstractContextManager:
        return nullcontext()

    def mean(self, value: float) -> float:
        return value

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's obj on every rank."""
        return obj

    def barrier(self) -> None:
        """Wait for every rank."""

    def close(self) -> None:
        """Release the process group."""


class DDPBackend(Backend):
    """torch.distributed (gloo on CPU, NCCL on CUDA) with DistributedDataParallel."""

    def __init__(self) -> None:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        super().__init__(name="ddp", rank=dist.get_rank(), size=dist.get_world_size(),
                         local_rank=int(os.environ.get("LOCAL_RANK", 0)))
        self._dist = dist

    def wrap(self, model, optimizer):
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.local_rank] if torch.cuda.is_available() else None
        return DistributedDataParallel(model, device_ids=device_ids), optimizer

    def broadcast_state(self, model, optimizer, resumed: bool) -> None:
        for tensor in model.state_dict().values():
            self._dist.broadcast(tensor, src=0)
        if resumed:
            optimizer.load_state_dict(self.broadcast_object(optimizer.state_dict()))

    def mean(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64)
        self._dist.all_reduce(t)
        return float(t.item()) / self.size

    def broadcast_object(self, obj):
        holder = [obj]
        self._dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def barrier(self) -> None:
        self._dist.barrier()

    def close(self) -> None:
        self._dist.destroy_process_group()


class HorovodBackend(Backend):
    """Horovod (gloo or MPI controller) with its DistributedOptimizer."""

    def __init__(self) -> None:
        import horovod.torch as hvd

        hvd.init()
        super().__init__(name="horovod", rank=hvd.rank(), size=hvd.size(),
                         local_rank=hvd.local_rank())
        self._hvd = hvd

    def wrap(self, model, optimizer):
        # The wrapper is a new optimizer built from the param groups: state loaded into the
        # old one is lost, so wrap before loading a checkpoint.
        return model, self._hvd.DistributedOptimizer(
            optimizer, named_parameters=model.named_parameters(), op=self._hvd.Average)

    def broadcast_state(self, model, optimizer, resumed: bool) -> None:
        # Only after a resume: a rank with an empty state first takes a zero-gradient
        # optimizer step, which applies weight decay to its parameters; so the optimizer
        # state goes first and the parameters are broadcast after it.
        if resumed:
            self._hvd.broadcast_optimizer_state(optimizer, root_rank=0)
        self._hvd.broadcast_parameters(model.state_dict(), root_rank=0)

    def synchronize(self, optimizer) -> None:
        optimizer.synchronize()

    def step_context(self, optimizer):
        # Gradients were already averaged by synchronize(); stepping must not do it twice.
        return optimizer.skip_synchronize()

    def mean(self, value: float) -> float:
        return float(self._hvd.allreduce(torch.tensor([value], dtype=torch.float64),
                                         op=self._hvd.Average).item())

    def broadcast_object(self, obj):
        # An explicit name: Horovod matches collectives by name, and its default is the
        # object's type, which differs between rank 0 (the value) and the others (None).
        return self._hvd.broadcast_object(obj, root_rank=0, name="aigc.broadcast_object")

    def barrier(self) -> None:
        self._hvd.barrier()

    def close(self) -> None:
        self._hvd.shutdown()


def init_backend(launcher: str) -> Backend:
    """The backend matching how this process was launched."""
    if launcher == "ddp":
        return DDPBackend()
    if launcher == "horovod":
        return HorovodBackend()
    return Backend()
