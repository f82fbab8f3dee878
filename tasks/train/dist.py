"""Distributed backends behind one interface: single process, PyTorch DDP, FSDP2, Horovod.

Learning-rate rule: `batch_size` is the *global* batch and stays fixed whatever the worker
count (each worker takes batch_size / workers of it), so `learning_rate` applies unchanged.
Growing the global batch is a config change, and then the linear scaling rule is the user's
call: scale learning_rate by new/old global batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

WEIGHTS_FILE = "weights.pt"


def frozen_names(model: torch.nn.Module) -> set[str]:
    """Names of the weights training leaves alone (a LoRA run's base model)."""
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def without_frozen(state: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """What a checkpoint keeps of a model state: every weight, or with frozen weights (LoRA)
    only the trainable ones; the frozen rest is rebuilt from the base model."""
    frozen = frozen_names(model)
    return {k: v for k, v in state.items() if k not in frozen}


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return without_frozen(model.state_dict(), model)


def local_bytes(tensors: Any) -> int:
    """Bytes this rank holds of a nest of tensors (a sharded tensor counts its shard)."""
    if isinstance(tensors, dict):
        return sum(local_bytes(v) for v in tensors.values())
    if isinstance(tensors, list | tuple):
        return sum(local_bytes(v) for v in tensors)
    if isinstance(tensors, torch.Tensor):
        local = tensors.to_local() if hasattr(tensors, "to_local") else tensors
        return local.numel() * local.element_size()
    return 0


@dataclass
class Backend:
    """Single process: the identity of every collective."""

    name: str = "single"
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    # Sharded: every rank takes part in each forward and in each checkpoint save and load.
    collective: bool = False

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def shard(self, model: torch.nn.Module) -> torch.nn.Module:
        """Distribute the parameters before the optimizer sees them (FSDP); else as is."""
        return model

    def wrap(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             accumulation: int = 1) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """The model to run forward and the optimizer to step, for `accumulation` backward
        passes a step (DDP and FSDP average each pass's gradients, which adds up alike)."""
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

    def save_weights(self, folder: Path, model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer) -> None:
        """Model and optimizer state into a checkpoint folder (rank 0 only: every rank
        holds the same replica)."""
        torch.save({"model": model_state(model), "optimizer": optimizer.state_dict()},
                   folder / WEIGHTS_FILE)

    def load_weights(self, folder: Path, model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer) -> None:
        """Rank 0 loads; broadcast_state then gives every rank the same."""
        state = torch.load(folder / WEIGHTS_FILE, weights_only=False, map_location="cpu")
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
        frozen = frozen_names(model)
        if unexpected or set(missing) - frozen:
            raise RuntimeError(f"checkpoint {folder} does not fit the model: missing "
                               f"{sorted(set(missing) - frozen)[:5]}, unexpected "
                               f"{sorted(unexpected)[:5]}")
        optimizer.load_state_dict(state["optimizer"])

    def full_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Every weight, unsharded, on rank 0."""
        return model.state_dict()

    def unsharded(self, model: torch.nn.Module, state: dict[str, torch.Tensor],
                  build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        """A plain module holding the trained weights, on rank 0, for saving."""
        return model

    def state_bytes(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    ) -> dict[str, int]:
        """Parameters and optimizer state held by this rank, in bytes."""
        return {"param_bytes": local_bytes(list(model.parameters())),
                "optimizer_bytes": local_bytes(optimizer.state_dict()["state"])}


class DDPBackend(Backend):
    """torch.distributed (gloo on CPU, NCCL on CUDA) with DistributedDataParallel."""

    def __init__(self) -> None:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        super().__init__(name="ddp", rank=dist.get_rank(), size=dist.get_world_size(),
                         local_rank=int(os.environ.get("LOCAL_RANK", 0)))
        self._dist = dist

    def wrap(self, model, optimizer, accumulation=1):
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


class FSDPBackend(DDPBackend):
    """FSDP2 (`fully_shard`): each rank holds 1/N of the parameters, gradients and
    optimizer state, gathering a block's weights only while it computes; gloo on CPU, NCCL
    on CUDA. Checkpoints are sharded (torch.distributed.checkpoint): every rank writes and
    reads its own part, and a checkpoint loads at any world size."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "fsdp"
        self.collective = True

    def shard(self, model):
        from torch.distributed.fsdp import fully_shard

        # One unit per transformer block (the classes transformers never splits across
        # devices), then the rest (embeddings, head) at the root.
        blocks = set(getattr(_transformers_model(model), "_no_split_modules", None) or ())
        for module in model.modules():
            if type(module).__name__ in blocks:
                fully_shard(module)
        fully_shard(model)
        return model

    def wrap(self, model, optimizer, accumulation=1):
        return model, optimizer

    def broadcast_state(self, model, optimizer, resumed: bool) -> None:
        """Nothing to send: every rank built the same model from the same seed before
        sharding it, and a resume loads each rank's shard from the checkpoint."""

    def _state(self, model, optimizer) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(model, optimizer)
        return {"model": without_frozen(model_sd, model), "optimizer": optim_sd}

    def save_weights(self, folder, model, optimizer) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.save(self._state(model, optimizer), checkpoint_id=str(folder / "sharded"))

    def load_weights(self, folder, model, optimizer) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        state = self._state(model, optimizer)
        dcp.load(state, checkpoint_id=str(folder / "sharded"))
        set_state_dict(model, optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"],
                       options=StateDictOptions(strict=False))

    def full_state(self, model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        # Gathered to rank 0's CPU memory only; the other ranks get an empty dict.
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                    cpu_offload=True))

    def unsharded(self, model, state, build):
        plain = build()
        plain.load_state_dict(state)
        return plain


def _transformers_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class HorovodBackend(Backend):
    """Horovod (gloo or MPI controller) with its DistributedOptimizer."""

    def __init__(self) -> None:
        import horovod.torch as hvd

        hvd.init()
        super().__init__(name="horovod", rank=hvd.rank(), size=hvd.size(),
                         local_rank=hvd.local_rank())
        self._hvd = hvd

    def wrap(self, model, optimizer, accumulation=1):
        # The wrapper is a new optimizer built from the param groups: state loaded into the
        # old one is lost, so wrap before loading a checkpoint. It reduces once after the
        # step's last backward pass (it refuses more passes than it was told of).
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return model, self._hvd.DistributedOptimizer(
            optimizer, named_parameters=trainable, op=self._hvd.Average,
            backward_passes_per_step=accumulation)

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
    if launcher == "fsdp":
        return FSDPBackend()
    if launcher == "horovod":
        return HorovodBackend()
    return Backend()
