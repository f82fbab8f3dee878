"""Preprocess: clean text, split by prompt hash, and make the run's tokenizer: the base
model's (with a chat template and pad token), or for the from-scratch demo a BPE tokenizer
trained on the train split."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.data.ingest import write_parquet
from tasks.lm.template import DEMO_TEMPLATE, EOS, SPECIAL_TOKENS, prepare_tokenizer
from tasks.lm.tokenizer import train_bpe
from tasks.stage import StageContext, atomic_path
from tasks.text import clean
from tasks.tracking import stage_run

log = logging.getLogger(__name__)
SPLITS = ("train", "validation", "test")


def split_of(prompt: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split by prompt, so all responses to one prompt stay on one side.

    Splitting by pair would leak: the corpus repeats prompts with different responses.
    """
    digest = hashlib.sha256(f"{seed}:{prompt.casefold()}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "validation"
    return "train"


def split_frame(frame: pd.DataFrame, seed: int, val_fraction: float,
                test_fraction: float) -> dict[str, pd.DataFrame]:
    frame = frame.assign(prompt=frame["prompt"].map(clean), response=frame["response"].map(clean))
    labels = frame["prompt"].map(lambda p: split_of(p, seed, val_fraction, test_fraction))
    return {name: frame[labels == name].reset_index(drop=True) for name in SPLITS}


def train_tokenizer(texts: list[str], vocab_size: int, target: Path) -> int:
    """The demo's byte-level BPE with its chat template, saved in transformers format."""
    tok = train_bpe(texts, vocab_size, special=SPECIAL_TOKENS, bos=EOS, eos=EOS,
                    chat_template=DEMO_TEMPLATE)
    with atomic_path(target) as tmp:
        tok.save_pretrained(str(tmp))
    return len(tok)


def make_tokenizer(base_dir: str | None, train: pd.DataFrame, vocab_size: int,
                   target: Path) -> int:
    """The base model's tokenizer, ready for the chat template, or a new BPE tokenizer."""
    if base_dir is None:
        texts = [*train["prompt"], *train["response"]]
        return train_tokenizer(texts, vocab_size, target)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    prepare_tokenizer(tok)
    with atomic_path(target) as tmp:
        tok.save_pretrained(str(tmp))
    return len(tok)


def run(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.config
    frame = pd.read_parquet(ctx.input("validate")["dataset_uri"])
    splits = split_frame(frame, cfg.seed, cfg.val_fraction, cfg.test_fraction)
    for name, part in splits.items():
        if part.empty:
            raise ValueError(f"split {name!r} is empty: {len(frame)} rows are too few for "
                             "val_fraction/test_fraction; add data or raise the fractions")
    out = ctx.stage_dir
    uris = {}
    for name, part in splits.items():
        uris[name] = str(out / f"{name}.parquet")
        write_parquet(part, Path(uris[name]))
    vocab = make_tokenizer(ctx.input("base_model").get("model_dir"), splits["train"],
                           cfg.vocab_size, out / "tokenizer")
    sizes = {name: len(part) for name, part in splits.items()}
    log.info("splits %s, tokenizer vocabulary %d", sizes, vocab)
    with stage_run(ctx) as run_:
        run_.log_params({f"rows_{k}": v for k, v in sizes.items()} | {"vocab_size": vocab})
    return {"splits": uris, "rows": sizes, "tokenizer_uri": str(out / "tokenizer"),
            "vocab_size": vocab}
