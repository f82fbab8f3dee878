"""The training loop: a small GPT-2 from config, sharded over ranks, checkpointed and resumable."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from tasks.config import LifecycleConfig
from tasks.errors import ConfigError
from tasks.evaluate.metrics import block_loss
from tasks.stage import atomic_path
from tasks.train.data import batch_indices, shard, token_blocks
from tasks.train.dist import Backend

log = logging.getLogger(__name__)
KEEP_CHECKPOINTS = 2
LOG_EVERY = 10


def build_model(cfg: LifecycleConfig, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(cfg.seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=cfg.block_size, n_embd=cfg.n_embd,
        n_layer=cfg.n_layer, n_head=cfg.n_head, bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
    )
    return GPT2LMHeadModel(config)


def lr_lambda(cfg: LifecycleConfig):
    """Linear warm-up, then cosine decay to 10% of the peak."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def step_seed(seed: int, step: int, rank: int) -> int:
    """Dropout RNG as a pure function of (seed, step, rank): a resumed run draws exactly the
    masks an uninterrupted one would, with no generator state to carry across processes."""
    digest = hashlib.sha256(f"{seed}:{step}:{rank}".encode()).digest()
    return int.from_bytes(digest[:7], "big")


def checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first; a crash mid-write leaves only a hidden temp dir."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / "meta.json").is_file())


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler, scaler,
                    extra: dict[str, Any]) -> Path:
    target = root / f"step-{step:08d}"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "rng": {"torch": torch.get_rng_state()}},
                   tmp / "state.pt")
        # meta.json last: its presence marks the checkpoint complete. The data position is
        # the step itself (batch order is a pure function of it).
        (tmp / "meta.json").write_text(json.dumps({"step": step, **extra}))
    for old in checkpoints(root)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(path: Path, model, optimizer, scheduler, scaler) -> dict[str, Any]:
    state = torch.load(path / "state.pt", weights_only=False, map_location="cpu")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    return json.loads((path / "meta.json").read_text())


def weights_checksum(model: torch.nn.Module) -> str:
    """sha256 over every tensor's bytes in a fixed order: equal iff the weights are equal."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def device_for(backend: Backend) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(backend.local_rank)
        return torch.device("cuda", backend.local_rank)
    return torch.device("cpu")


def autocast_and_scaler(precision: str, device: torch.device):
    """bf16 autocast on CPU or GPU; fp16 only on CUDA, with a GradScaler against underflow."""
    if precision == "fp32":
        return nullcontext, None
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError("precision: fp16 needs a CUDA device; use bf16 on CPU")
        return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda")
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), None


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    # A coarse refresh keeps Airflow task logs readable.
    return tqdm(total=total, initial=initial, desc="train", unit="step", mininterval=5.0,
                miniters=max(1, total // 20), disable=not enabled)


def _resume_or_start(cfg, ckpt_root, model, optimizer, scheduler, scaler, val_blocks, backend):
    """Rank 0 loads the newest checkpoint (or measures the untrained model); all ranks then
    receive its step, schedule and, by broadcast, its weights and optimizer state."""
    meta = None
    if backend.is_root:
        existing = checkpoints(ckpt_root)
        if existing:
            meta = load_checkpoint(existing[-1], model, optimizer, scheduler, scaler)
            log.info("resuming from %s (step %d)", existing[-1], meta["step"])
        else:
            meta = {"step": 0, "untrained_val_loss": block_loss(model, val_blocks,
                                                                cfg.batch_size)}
        meta["scheduler"] = scheduler.state_dict()
    meta = backend.broadcast_object(meta)
    scheduler.load_state_dict(meta.pop("scheduler"))
    return meta


def train(cfg: LifecycleConfig, train_df: pd.DataFrame, val_df: pd.DataFrame, tokenizer,
          out: Path, run_=None, backend: Backend | None = None) -> dict[str, Any]:
    """Train to cfg.max_steps on every rank of backend; rank 0 checkpoints and logs.

    Each step's global batch (cfg.batch_size blocks) is split across ranks without overlap,
    and gradients are averaged, so any worker count follows the single-process trajectory
    up to float rounding and dropout masks.
    """
    backend = backend or Backend()
    if cfg.batch_size % backend.size:
        raise ConfigError(f"batch_size: {cfg.batch_size} is not divisible by the "
                          f"{backend.size} workers")
    device = device_for(backend)
    model = build_model(cfg, tokenizer).to(device)
    train_blocks = token_blocks(train_df, tokenizer, cfg.block_size)
    val_blocks = token_blocks(val_df, tokenizer, cfg.block_size).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    forward_model, optimizer = backend.wrap(model, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    autocast, scaler = autocast_and_scaler(cfg.precision, device)
    ckpt_root = out / "checkpoints"
    meta = _resume_or_start(cfg, ckpt_root, model, optimizer, scheduler, scaler, val_blocks,
                            backend)
    start = meta["step"]
    backend.broadcast_state(model, optimizer, resumed=start > 0)
    model.train()
    loss_value = meta.get("train_loss", float("nan"))
    bar = _progress(cfg.max_steps, start, backend.is_root)
    started = time.perf_counter()
    for step in range(start, cfg.max_steps):
        torch.manual_seed(step_seed(cfg.seed, step, backend.rank))
        idx = batch_indices(step, len(train_blocks), cfg.batch_size, cfg.seed)
        batch = train_blocks[shard(idx, backend.rank, backend.size)].to(device)
        with autocast():
            loss = forward_model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()  # set_to_none by default; Horovod takes no argument
        (scaler.scale(loss) if scaler else loss).backward()
        backend.synchronize(optimizer)
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        with backend.step_context(optimizer):
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
        scheduler.step()
        done = step + 1
        bar.update(1)
        if done % LOG_EVERY == 0 or done == cfg.max_steps:
            loss_value = backend.mean(loss.item())
            bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
            if run_ is not None:
                run_.log_metrics({"train_loss": loss_value, "lr": scheduler.get_last_lr()[0]},
                                 step=done)
        if backend.is_root and done % cfg.eval_every == 0 and done < cfg.max_steps:
            val = block_loss(model, val_blocks, cfg.batch_size)
            model.train()
            log.info("step %d: train loss %.4f, val loss %.4f (ppl %.1f)", done, loss_value,
                     val, math.exp(val))
            if run_ is not None:
                run_.log_metrics({"val_loss": val, "val_perplexity": math.exp(val)}, step=done)
        if backend.is_root and (done % cfg.checkpoint_every == 0 or done == cfg.max_steps):
            save_checkpoint(ckpt_root, done, model, optimizer, scheduler, scaler,
                            {"untrained_val_loss": meta["untrained_val_loss"],
                             "train_loss": loss_value})
    bar.close()
    seconds = time.perf_counter() - started
    result = {"rank": backend.rank, "checksum": weights_checksum(model),
              "train_seconds": seconds,
              # Global tokens through the optimizer per second of loop time (eval included).
              "tokens_per_second": (cfg.max_steps - start) * cfg.batch_size * cfg.block_size
              / max(seconds, 1e-9)}
    if backend.is_root:
        result |= _finish(cfg, model, tokenizer, out, val_blocks, train_blocks, meta,
                          loss_value, start, backend)
    return result


def _finish(cfg, model, tokenizer, out, val_blocks, train_blocks, meta, loss_value, start,
            backend) -> dict[str, Any]:
    val = block_loss(model, val_blocks, cfg.batch_size)
    with atomic_path(out / "model") as tmp:
        model.to("cpu").save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return {
        "model_uri": str(out / "model"), "steps": cfg.max_steps,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_loss": loss_value, "val_loss": val, "val_perplexity": math.exp(val),
        "untrained_val_perplexity": math.exp(meta["untrained_val_loss"]),
        "train_tokens": int(train_blocks.numel()), "resumed_from_step": start,
        "launcher": backend.name, "workers": backend.size, "precision": cfg.precision,
    }
