"""What the gate reads: held-out quality, bytes on disk and CPU latency, measured the same way
for the baseline and every candidate, whatever its format.

Latency is never compared across separate measurements: the candidate and the baseline take
turns in rounds, so a burst of load from elsewhere on the machine slows both within a round
and shows as spread between rounds instead of as a speed-up."""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from tasks.compress.gate import Measurement
from tasks.lm.artifact import CausalLM
from tasks.lm.model import TextModel, load

# Files that hold weights; tokenizer, config and manifest files are the same for every format.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pt2", ".onnx", ".data")
ROUNDS = 5  # paired rounds of baseline and candidate
REPEATS = 5  # forwards per model per round (its median counts)
Timer = Callable[[], float]


def size_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).rglob("*")
               if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def _inputs(lm: CausalLM, batch: int, length: int, seed: int,
            ) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (batch, min(length, lm.n_positions)), generator=g)
    return ids, torch.ones_like(ids)


def latency_ms(lm: CausalLM, batch: int, length: int, repeats: int = 20, seed: int = 0,
               timer: Timer = time.perf_counter, warm_up: int = 3) -> float:
    """Median wall time of one forward over `batch` sequences of `length` tokens (the
    training block: a base model's context may be thousands of tokens)."""
    ids, mask = _inputs(lm, batch, length, seed)
    for _ in range(warm_up):  # allocator, lazy kernels, onnxruntime's first-run work
        lm.logits(ids, mask)
    times = []
    for _ in range(repeats):
        start = timer()
        lm.logits(ids, mask)
        times.append((timer() - start) * 1000)
    return statistics.median(times)


def paired_latency(baseline: CausalLM, candidate: CausalLM, batch: int, length: int,
                   rounds: int = ROUNDS, repeats: int = REPEATS,
                   timer: Timer = time.perf_counter) -> tuple[float, list[float]]:
    """(the candidate's median latency, per-round baseline/candidate ratios). Who goes first
    alternates, so a slow drift of the machine favours neither."""
    for lm in (baseline, candidate):
        latency_ms(lm, batch, length, repeats=1, timer=timer)  # warm-up: not counted
    ratios, own = [], []
    for r in range(rounds):
        pair = (baseline, candidate) if r % 2 == 0 else (candidate, baseline)
        ms = {id(lm): latency_ms(lm, batch, length, repeats, timer=timer, warm_up=0)
              for lm in pair}
        own.append(ms[id(candidate)])
        ratios.append(ms[id(baseline)] / ms[id(candidate)])
    return statistics.median(own), ratios


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the vocabulary and merges: equal iff token ids mean the same strings."""
    state = tokenizer.backend_tokenizer.to_str()
    model = json.loads(state)["model"]
    return hashlib.sha256(json.dumps(model, sort_keys=True).encode()).hexdigest()[:16]


def measure(model_dir: Path, pairs: Sequence[tuple[str, str]], batch: int, length: int,
            baseline: TextModel | None = None, timer: Timer = time.perf_counter,
            ) -> Measurement:
    """Quality within, and latency at, `length` tokens (the training block); a candidate's
    latency in rounds paired with the baseline's."""
    model = load(model_dir)
    lik = model.likelihood(pairs, window=length)
    if baseline is None:
        latency, rounds = latency_ms(model.lm, batch, length, timer=timer), []
    else:
        latency, rounds = paired_latency(baseline.lm, model.lm, batch, length, timer=timer)
    return Measurement(perplexity=lik.perplexity, char_perplexity=lik.char_perplexity,
                       size_bytes=size_bytes(model_dir), latency_ms=latency,
                       tokenizer=tokenizer_fingerprint(model.tokenizer),
                       speedup_rounds=rounds)
