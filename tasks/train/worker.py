"""One training process: `python -m tasks.train.worker --config <payload>` under a launcher."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from tasks.stage import StageContext, write_json
from tasks.tracking import stage_run
from tasks.train.dist import Backend, init_backend
from tasks.train.loop import train
from tasks.train.oom import attempts
from tasks.train.preempt import EXIT_PREEMPTED, Preempted

log = logging.getLogger(__name__)
LOGGED_PARAMS = ("n_layer", "n_embd", "n_head", "block_size", "batch_size", "max_steps",
                 "learning_rate", "seed", "vocab_size", "launcher", "workers", "precision",
                 "base_model", "finetune_method", "lora_r", "lora_alpha", "lora_dropout",
                 "lora_target_modules", "loss_on_prompt", "grad_accumulation")


def rank_file(stage_dir: Path, rank: int) -> Path:
    return stage_dir / "ranks" / f"rank-{rank}.json"


def oom_files(stage_dir: Path) -> list[Path]:
    """What this attempt's workers said when they ran out of memory."""
    return sorted((stage_dir / "ranks").glob("oom-*.txt"))


def run_worker(ctx: StageContext, backend: Backend) -> dict[str, Any]:
    """Train on this rank; only rank 0 talks to MLflow. Writes this rank's result file."""
    from transformers import AutoTokenizer

    cfg = ctx.config
    prep = ctx.input("preprocess")
    tokenizer = AutoTokenizer.from_pretrained(prep["tokenizer_uri"])
    train_df = pd.read_parquet(prep["splits"]["train"])
    val_df = pd.read_parquet(prep["splits"]["validation"])
    base_dir = ctx.input("base_model")["model_dir"]
    if backend.is_root:
        with stage_run(ctx) as run_:
            run_.log_params({k: v for k, v in cfg.to_dict().items() if k in LOGGED_PARAMS})
            run_.set_tags({"aigc.train.oom_retries": len(attempts(ctx.stage_dir))})
            result = train(cfg, train_df, val_df, tokenizer, ctx.stage_dir, run_, backend,
                           base_dir)
            # The held-out curve runs from the untrained model (step 0) to the trained one
            # (the last step), beside the evaluations logged while training.
            run_.log_metrics({"val_loss": math.log(result["untrained_val_perplexity"])},
                             step=0)
            run_.log_metrics({k: result[k] for k in ("val_loss", "val_perplexity")},
                             step=result["steps"], parent=True)
            run_.log_metrics({k: result[k] for k in ("untrained_val_perplexity",
                                                       "trainable_parameters")}, parent=True)
    else:
        result = train(cfg, train_df, val_df, tokenizer, ctx.stage_dir, None, backend,
                       base_dir)
    write_json(rank_file(ctx.stage_dir, backend.rank), result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.train.worker", description=__doc__)
    parser.add_argument("--config", required=True, help="the train stage's payload file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("tasks").setLevel(logging.INFO)
    ctx = StageContext.from_payload(json.loads(Path(args.config).read_text()))
    backend = init_backend(ctx.config.launcher)
    try:
        run_worker(ctx, backend)
    except torch.OutOfMemoryError as exc:
        # The stage notes it, so that its retry splits the batch in smaller micro-batches.
        path = ctx.stage_dir / "ranks" / f"oom-{backend.rank}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"rank {backend.rank}: {type(exc).__name__}: {exc}")
        raise
    except Preempted as exc:
        log.warning("rank %d: %s", backend.rank, exc)
        return EXIT_PREEMPTED
    finally:
        backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
