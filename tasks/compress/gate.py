"""The compression gate and the choice among passing candidates: pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Measurement:
    """What was measured of one model: held-out quality, serialized size, CPU latency.

    `tokenizer` fingerprints the vocabulary: token perplexities are comparable only between
    models that share it (a student distilled from the champion may not)."""

    perplexity: float
    char_perplexity: float
    size_bytes: int
    latency_ms: float
    tokenizer: str

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class CompressionBudget:
    """How much quality a candidate may give up, and what it must buy with it."""

    max_quality_loss: float  # relative increase in held-out char perplexity
    min_speedup: float  # baseline latency / candidate latency
    max_size_ratio: float  # candidate bytes / baseline bytes


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    quality_loss: float
    speedup: float
    size_ratio: float
    reasons: tuple[str, ...]

    def to_dict(self) -> dict:
        return asdict(self) | {"reasons": list(self.reasons)}

    @classmethod
    def from_dict(cls, data: dict) -> GateVerdict:
        return cls(**data | {"reasons": tuple(data["reasons"])})


def passes_compression_gate(baseline: Measurement, candidate: Measurement,
                            budget: CompressionBudget) -> GateVerdict:
    """Pass only if quality stays within budget and the candidate is as fast and as small as
    the budget demands. Reasons list every check, failed ones first.

    Quality is held-out token perplexity, or per-character perplexity when the candidate's
    tokenizer differs from the baseline's (then tokens are not the same unit)."""
    same_vocab = candidate.tokenizer == baseline.tokenizer
    unit = "perplexity" if same_vocab else "char perplexity"
    loss = (candidate.perplexity / baseline.perplexity if same_vocab
            else candidate.char_perplexity / baseline.char_perplexity) - 1
    speedup = baseline.latency_ms / candidate.latency_ms
    ratio = candidate.size_bytes / baseline.size_bytes
    checks = [
        (loss <= budget.max_quality_loss,
         f"quality loss {loss:+.2%} vs max {budget.max_quality_loss:.2%} ({unit})"),
        (speedup >= budget.min_speedup,
         f"speed-up {speedup:.2f}x vs min {budget.min_speedup:.2f}x"),
        (ratio <= budget.max_size_ratio,
         f"size ratio {ratio:.3f} vs max {budget.max_size_ratio:.3f}"),
    ]
    failed = [f"FAIL {text}" for ok, text in checks if not ok]
    passed = [f"ok {text}" for ok, text in checks if ok]
    return GateVerdict(passed=not failed, quality_loss=loss, speedup=speedup, size_ratio=ratio,
                       reasons=tuple(failed + passed))


POLICIES = ("smallest", "fastest")


def choose(candidates: Sequence[tuple[str, Measurement, GateVerdict]], policy: str,
           ) -> str | None:
    """The best passing candidate's name under the policy; None when none passed.

    Ties break on the other criterion, then on quality, then on the name (deterministic)."""
    if policy not in POLICIES:
        raise ValueError(f"compress_policy: {policy!r} is not one of {POLICIES}")
    passing = [(name, m) for name, m, v in candidates if v.passed]
    if not passing:
        return None

    def key(item: tuple[str, Measurement]) -> tuple:
        name, m = item
        size_first = (m.size_bytes, m.latency_ms)
        primary = size_first if policy == "smallest" else size_first[::-1]
        return (*primary, m.char_perplexity, name)

    return min(passing, key=key)[0]
