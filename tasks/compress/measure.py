"""What the gate reads: held-out quality, bytes on disk and CPU latency, measured the same way
for the baseline and every candidate, whatever its format."""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from tasks.compress.gate import Measurement
from tasks.lm.artifact import CausalLM
from tasks.lm.model import load

# Files that hold weights; tokenizer, config and manifest files are the same for every format.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pt2", ".onnx", ".data")


def size_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).rglob("*")
               if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def latency_ms(lm: CausalLM, batch: int, length: int, repeats: int = 20, seed: int = 0,
               ) -> float:
    """Median wall time of one forward over `batch` sequences of `length` tokens (the
    training block: a base model's context may be thousands of tokens)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (batch, min(length, lm.n_positions)), generator=g)
    mask = torch.ones_like(ids)
    for _ in range(3):  # warm-up: allocator, lazy kernels, onnxruntime's first-run work
        lm.logits(ids, mask)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        lm.logits(ids, mask)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the vocabulary and merges: equal iff token ids mean the same strings."""
    state = tokenizer.backend_tokenizer.to_str()
    model = json.loads(state)["model"]
    return hashlib.sha256(json.dumps(model, sort_keys=True).encode()).hexdigest()[:16]


def measure(model_dir: Path, pairs: Sequence[tuple[str, str]], batch: int, length: int,
            ) -> Measurement:
    """Quality within, and latency at, `length` tokens: the training block."""
    model = load(model_dir)
    lik = model.likelihood(pairs, window=length)
    return Measurement(perplexity=lik.perplexity, char_perplexity=lik.char_perplexity,
                       size_bytes=size_bytes(model_dir),
                       latency_ms=latency_ms(model.lm, batch, length),
                       tokenizer=tokenizer_fingerprint(model.tokenizer))
