"""The training loop: a base model or a small GPT-2 from config, fully or with LoRA, over
any backend (single, DDP, FSDP, Horovod), checkpointed and resumable bit for bit."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from tasks.config import LifecycleConfig
from tasks.errors import ConfigError
from tasks.lm.likelihood import block_loss, labelled, lm_loss
from tasks.lm.lora import apply_lora, is_lora, merged, trainable_parameters
from tasks.stage import atomic_path, write_json
from tasks.train.checkpoint import (
    checkpoints,
    load_checkpoint,
    save_checkpoint,
    weights_checksum,
)
from tasks.train.data import Blocks, batch_indices, shard, token_blocks
from tasks.train.dist import Backend
from tasks.train.preempt import Preempted, Preemption, grace_seconds

log = logging.getLogger(__name__)
LOG_EVERY = 10
PROGRESS_FILE = "progress.json"
OOM_TEST_ENV = "AIGC_TEST_OOM_AT"


def build_model(cfg: LifecycleConfig, tokenizer, base_dir: str | None) -> torch.nn.Module:
    """The model to train: the base checkpoint (fp32), or a small GPT-2 from the config with
    the run's tokenizer; with LoRA adapters when asked. Seeded, so every rank builds the
    same model."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(cfg.seed)
    if base_dir is not None:
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    else:
        model = GPT2LMHeadModel(GPT2Config(
            vocab_size=len(tokenizer), n_positions=cfg.block_size, n_embd=cfg.n_embd,
            n_layer=cfg.n_layer, n_head=cfg.n_head, bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout))
    return apply_lora(model, cfg) if cfg.finetune_method == "lora" else model


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


def _val_loss(model, val: Blocks, cfg: LifecycleConfig, backend: Backend) -> float | None:
    """Held-out loss of the packed validation blocks: on rank 0, or on every rank when the
    model is sharded (each forward gathers weights from all ranks); None elsewhere."""
    if not (backend.is_root or backend.collective):
        return None
    loss = block_loss(model, val.ids, val.labels, cfg.batch_size)
    model.train()
    return loss


def _resume_or_start(cfg, ckpt_root, model, optimizer, scheduler, scaler, val_blocks, backend):
    """Resume from the newest complete checkpoint (rank 0 loads it, or every rank its shard),
    else measure the untrained model; every rank then holds its step and schedule."""
    existing = checkpoints(ckpt_root)
    newest = backend.broadcast_object(str(existing[-1]) if existing else None)
    meta = None
    if newest is not None and (backend.is_root or backend.collective):
        meta = load_checkpoint(Path(newest), model, optimizer, scheduler, scaler, backend)
        log.info("resuming from %s (step %d)", newest, meta["step"])
    elif newest is None:
        untrained = _val_loss(model, val_blocks, cfg, backend)
        meta = {"step": 0, "untrained_val_loss": untrained}
    if meta is not None:
        meta["scheduler"] = scheduler.state_dict()
    meta = backend.broadcast_object(meta)
    scheduler.load_state_dict(meta.pop("scheduler"))
    return meta


def _forced_oom(step: int, rows: int) -> None:
    """Where no GPU can run out of memory, a test makes one: AIGC_TEST_OOM_AT="step:rows"
    raises the real out-of-memory exception at that step for a micro-batch of more rows."""
    spec = os.environ.get(OOM_TEST_ENV)
    if spec:
        at, above = (int(v) for v in spec.split(":"))
        if step == at and rows > above:
            raise torch.OutOfMemoryError(f"forced out of memory at step {step} with a "
                                         f"micro-batch of {rows} ({OOM_TEST_ENV})")


def _step(cfg: LifecycleConfig, step: int, forward_model, train_blocks: Blocks, backend: Backend,
          device: torch.device, autocast, scaler) -> torch.Tensor:
    """Forward and backward of this rank's shard of the step's global batch, in
    grad_accumulation micro-batches whose gradients add up to the shard's: each loss is
    scaled by the global batch's labelled tokens, so averaging the ranks' gradients gives
    the global batch's mean whatever the split. Returns the shard's (scaled) loss."""
    torch.manual_seed(step_seed(cfg.seed, step, backend.rank))
    idx = batch_indices(step, len(train_blocks), cfg.batch_size, cfg.seed)
    count = labelled(train_blocks.labels[idx]) / backend.size
    total = torch.zeros((), device=device)
    for part in shard(idx, backend.rank, backend.size).chunk(cfg.grad_accumulation):
        _forced_oom(step, len(part))
        batch = train_blocks[part].to(device)
        with autocast():
            logits = forward_model(input_ids=batch.ids).logits
        loss = lm_loss(logits, batch.labels, count)
        (scaler.scale(loss) if scaler else loss).backward()
        total += loss.detach()
    return total


def train(cfg: LifecycleConfig, train_df: pd.DataFrame, val_df: pd.DataFrame, tokenizer,
          out: Path, run_=None, backend: Backend | None = None,
          base_dir: str | None = None) -> dict[str, Any]:
    """Train to cfg.max_steps on every rank of backend; rank 0 logs, and checkpoints with
    it (every rank writes its shard with FSDP).

    Each step's global batch (cfg.batch_size blocks) is split across ranks without overlap,
    and gradients are averaged, so any worker count follows the single-process trajectory
    up to float rounding and dropout masks.
    """
    backend = backend or Backend()
    if cfg.batch_size % backend.size:
        raise ConfigError(f"batch_size: {cfg.batch_size} is not divisible by the "
                          f"{backend.size} workers")
    device = device_for(backend)
    model = backend.shard(build_model(cfg, tokenizer, base_dir).to(device))
    train_blocks = token_blocks(train_df, tokenizer, cfg.block_size, cfg.loss_on_prompt)
    val_blocks = token_blocks(val_df, tokenizer, cfg.block_size, cfg.loss_on_prompt).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  betas=(0.9, 0.95))
    forward_model, optimizer = backend.wrap(model, optimizer, cfg.grad_accumulation)
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
    step_seconds: list[float] = []
    preemption = Preemption(grace_seconds())
    try:
        for step in range(start, cfg.max_steps):
            step_started = time.perf_counter()
            optimizer.zero_grad()  # set_to_none by default; Horovod takes no argument
            loss = _step(cfg, step, forward_model, train_blocks, backend, device, autocast,
                         scaler)
            backend.synchronize(optimizer)
            if scaler:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            with backend.step_context(optimizer):
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
            scheduler.step()
            step_seconds.append(time.perf_counter() - step_started)
            done = step + 1
            bar.update(1)
            if done % LOG_EVERY == 0 or done == cfg.max_steps:
                loss_value = backend.mean(loss.item())
                bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
                if backend.is_root:
                    _report_progress(out, cfg, done, start, loss_value, step_seconds)
                if run_ is not None:
                    run_.log_metrics({"train_loss": loss_value, "lr": scheduler.get_last_lr()[0]},
                                     step=done)
            if done % cfg.eval_every == 0 and done < cfg.max_steps:
                val = _val_loss(model, val_blocks, cfg, backend)
                if backend.is_root:
                    log.info("step %d: train loss %.4f, val loss %.4f (ppl %.1f)", done,
                             loss_value, val, math.exp(val))
                    if run_ is not None:
                        run_.log_metrics({"val_loss": val, "val_perplexity": math.exp(val)},
                                         step=done)
            if done % cfg.checkpoint_every == 0 or done == cfg.max_steps:
                save_checkpoint(ckpt_root, done, model, optimizer, scheduler, scaler,
                                {"untrained_val_loss": meta["untrained_val_loss"],
                                 "train_loss": loss_value}, backend)
            # SIGTERM: every rank stops after the same step (agreeing is a collective).
            if backend.mean(1.0 if preemption.requested else 0.0) > 0:
                if done % cfg.checkpoint_every and done != cfg.max_steps:
                    save_checkpoint(ckpt_root, done, model, optimizer, scheduler, scaler,
                                    {"untrained_val_loss": meta["untrained_val_loss"],
                                     "train_loss": loss_value}, backend)
                raise Preempted(done)
    finally:
        preemption.close()
    bar.close()
    seconds = time.perf_counter() - started
    result = {"rank": backend.rank, "train_seconds": seconds,
              # Global tokens through the optimizer per second of loop time (eval included).
              "tokens_per_second": (cfg.max_steps - start) * cfg.batch_size * cfg.block_size
              / max(seconds, 1e-9),
              # One optimizer step alone (no evaluation or checkpoint): the median, and the
              # quartiles as its spread, are what throughput benchmarks compare.
              "step_seconds_median": statistics.median(step_seconds) if step_seconds else None,
              "step_seconds_quartiles": (statistics.quantiles(step_seconds, n=4)[::2]
                                         if len(step_seconds) > 1 else None),
              **backend.state_bytes(model, optimizer),
              "peak_rss_bytes": peak_rss_bytes()}
    val = _val_loss(model, val_blocks, cfg, backend)
    state = backend.full_state(model)
    # Sharded ranks hold disjoint parts, so only rank 0's gathered copy can be summed; the
    # replicated backends compare every rank's own weights.
    checksum = weights_checksum(state) if state else None
    result["checksum"] = backend.broadcast_object(checksum) if backend.collective else checksum
    if backend.is_root:
        plain = backend.unsharded(model, state, lambda: build_model(cfg, tokenizer, base_dir))
        result |= _finish(cfg, plain, tokenizer, out, val, train_blocks, meta, loss_value,
                          start, backend, run_)
    return result


def _report_progress(out: Path, cfg: LifecycleConfig, done: int, start: int, loss: float,
                     step_seconds: list[float]) -> None:
    """The step, loss and speed so far, for whoever follows the run (`make run`)."""
    recent = statistics.median(step_seconds[-LOG_EVERY:])
    write_json(out / PROGRESS_FILE, {
        "step": done, "max_steps": cfg.max_steps, "loss": loss, "resumed_from": start,
        "tokens_per_second": cfg.batch_size * cfg.block_size / recent,
        "seconds_left": recent * (cfg.max_steps - done)})


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports kilobytes)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _finish(cfg, model, tokenizer, out, val, train_blocks, meta, loss_value, start, backend,
            run_) -> dict[str, Any]:
    """Save the trained model (LoRA: the adapter, and the base with it merged in)."""
    model.to("cpu")
    trainable = trainable_parameters(model)
    if is_lora(model):
        with atomic_path(out / "adapter") as tmp:
            model.save_pretrained(str(tmp))
        if run_ is not None:
            run_.log_artifacts(out / "adapter", "adapter")
    final = merged(model)
    with atomic_path(out / "model") as tmp:
        final.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return {
        "model_uri": str(out / "model"), "steps": cfg.max_steps,
        "adapter_uri": str(out / "adapter") if (out / "adapter").is_dir() else None,
        "parameters": sum(p.numel() for p in final.parameters()),
        "trainable_parameters": trainable, "finetune_method": cfg.finetune_method,
        "train_loss": loss_value, "val_loss": val, "val_perplexity": math.exp(val),
        "untrained_val_perplexity": math.exp(meta["untrained_val_loss"]),
        "train_tokens": int(train_blocks.ids.numel()), "resumed_from_step": start,
        "launcher": backend.name, "workers": backend.size, "precision": cfg.precision,
    }
