"""Resumable checkpoints: complete or invisible, written by rank 0 (replicated backends) or
by every rank (FSDP's sharded state)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from tasks.train.dist import Backend

KEEP_CHECKPOINTS = 2
STATE_FILE = "state.pt"
META_FILE = "meta.json"


def checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first; a crash mid-write leaves only a hidden temp dir."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / META_FILE).is_file())


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler, scaler,
                    extra: dict[str, Any], backend: Backend) -> None:
    """Write step's checkpoint into a hidden folder and publish it by one rename.

    The temporary name is a function of the step, so every rank of a sharded save writes
    into the same folder; meta.json is written last and marks it complete."""
    target = root / f"step-{step:08d}"
    tmp = root / f".{target.name}.tmp"
    if backend.is_root:
        shutil.rmtree(tmp, ignore_errors=True)  # an earlier attempt's leftover
        tmp.mkdir(parents=True)
    if backend.collective:
        backend.barrier()
        backend.save_weights(tmp, model, optimizer)
        backend.barrier()
    elif backend.is_root:
        backend.save_weights(tmp, model, optimizer)
    if not backend.is_root:
        return
    torch.save({"scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": {"torch": torch.get_rng_state()}}, tmp / STATE_FILE)
    # The data position is the step itself (batch order is a pure function of it).
    (tmp / META_FILE).write_text(json.dumps({"step": step, **extra}))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    for old in checkpoints(root)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, model, optimizer, scheduler, scaler,
                    backend: Backend) -> dict[str, Any]:
    """Restore a checkpoint (on rank 0, or on every rank for sharded state); returns its
    meta (step, and what the run measured before it)."""
    backend.load_weights(path, model, optimizer)
    state = torch.load(path / STATE_FILE, weights_only=False, map_location="cpu")
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    return json.loads((path / META_FILE).read_text())


def weights_checksum(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's bytes in a fixed order: equal iff the weights are equal."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
