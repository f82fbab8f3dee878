"""Train: a small GPT-2 from config, with periodic atomic checkpoints and resume."""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tasks.config import LifecycleConfig
from tasks.evaluate.metrics import block_loss
from tasks.stage import StageContext, atomic_path
from tasks.tracking import stage_run
from tasks.train.data import batch_indices, token_blocks

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
        tie_word_embeddings=True,
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


def _checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first; a crash mid-write leaves only a hidden temp dir."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / "meta.json").is_file())


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler,
                    extra: dict[str, Any]) -> Path:
    target = root / f"step-{step:08d}"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                            "python": random.getstate()}},
                   tmp / "state.pt")
        # meta.json last: its presence marks the checkpoint complete.
        (tmp / "meta.json").write_text(json.dumps({"step": step, **extra}))
    for old in _checkpoints(root)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict[str, Any]:
    state = torch.load(path / "state.pt", weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return json.loads((path / "meta.json").read_text())


def _progress(total: int, initial: int):
    from tqdm import tqdm

    # A coarse refresh keeps Airflow task logs readable.
    return tqdm(total=total, initial=initial, desc="train", unit="step", mininterval=5.0,
                miniters=max(1, total // 20))


def train(cfg: LifecycleConfig, train_df: pd.DataFrame, val_df: pd.DataFrame, tokenizer,
          out: Path, run_=None) -> dict[str, Any]:
    """Train to cfg.max_steps, resuming from the newest checkpoint under out/checkpoints."""
    model = build_model(cfg, tokenizer)
    train_blocks = token_blocks(train_df, tokenizer, cfg.block_size)
    val_blocks = token_blocks(val_df, tokenizer, cfg.block_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    ckpt_root = out / "checkpoints"
    existing = _checkpoints(ckpt_root)
    if existing:
        meta = load_checkpoint(existing[-1], model, optimizer, scheduler)
        start, untrained = meta["step"], meta["untrained_val_loss"]
        log.info("resuming from %s (step %d)", existing[-1], start)
    else:
        start, untrained = 0, block_loss(model, val_blocks, cfg.batch_size)
    model.train()
    loss_value = float("nan")
    bar = _progress(cfg.max_steps, start)
    for step in range(start, cfg.max_steps):
        batch = train_blocks[batch_indices(step, len(train_blocks), cfg.batch_size, cfg.seed)]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        loss_value = loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
        done = step + 1
        if run_ is not None and (done % LOG_EVERY == 0 or done == cfg.max_steps):
            run_.log_metrics({"train_loss": loss_value, "lr": scheduler.get_last_lr()[0]},
                             step=done)
        if done % cfg.eval_every == 0 and done < cfg.max_steps:
            val = block_loss(model, val_blocks, cfg.batch_size)
            model.train()
            log.info("step %d: train loss %.4f, val loss %.4f (ppl %.1f)", done, loss_value,
                     val, math.exp(val))
            if run_ is not None:
                run_.log_metrics({"val_loss": val, "val_perplexity": math.exp(val)}, step=done)
        if done % cfg.checkpoint_every == 0 or done == cfg.max_steps:
            save_checkpoint(ckpt_root, done, model, optimizer, scheduler,
                            {"untrained_val_loss": untrained, "train_loss": loss_value})
    bar.close()
    val = block_loss(model, val_blocks, cfg.batch_size)
    with atomic_path(out / "model") as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    if math.isnan(loss_value):  # resumed at the end: report the checkpointed train loss
        loss_value = json.loads((_checkpoints(ckpt_root)[-1] / "meta.json").read_text())[
            "train_loss"]
    return {
        "model_uri": str(out / "model"), "steps": cfg.max_steps,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_loss": loss_value, "val_loss": val, "val_perplexity": math.exp(val),
        "untrained_val_perplexity": math.exp(untrained),
        "train_tokens": int(train_blocks.numel()), "resumed_from_step": start,
    }


def run(ctx: StageContext) -> dict[str, Any]:
    from transformers import AutoTokenizer

    cfg = ctx.config
    prep = ctx.input("preprocess")
    tokenizer = AutoTokenizer.from_pretrained(prep["tokenizer_uri"])
    train_df = pd.read_parquet(prep["splits"]["train"])
    val_df = pd.read_parquet(prep["splits"]["validation"])
    with stage_run(ctx) as run_:
        run_.log_params({k: v for k, v in cfg.to_dict().items()
                         if k in ("n_layer", "n_embd", "n_head", "block_size", "batch_size",
                                  "max_steps", "learning_rate", "seed", "vocab_size")})
        result = train(cfg, train_df, val_df, tokenizer, ctx.stage_dir, run_)
        run_.log_metrics({k: result[k] for k in ("val_loss", "val_perplexity",
                                                   "untrained_val_perplexity")}, parent=True)
    log.info("trained %d parameters: val perplexity %.1f (untrained %.1f)", result["parameters"],
             result["val_perplexity"], result["untrained_val_perplexity"])
    return result
