"""The compression gate and the choice among passing candidates: pure functions."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Measurement:
    """What was measured of one model: held-out quality, serialized size, CPU latency.

    `tokenizer` fingerprints the vocabulary: token perplexities are comparable only between
    models that share it (a student distilled from the champion may not).
    `speedup_rounds` are the baseline/candidate latency ratios of rounds in which the two
    were timed back to back, so both saw the same load on the machine (empty for the
    baseline itself)."""

    perplexity: float
    char_perplexity: float
    size_bytes: int
    latency_ms: float
    tokenizer: str
    speedup_rounds: Sequence[float] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return asdict(self) | {"speedup_rounds": list(self.speedup_rounds)}


@dataclass(frozen=True)
class CompressionBudget:
    """How much quality a candidate may give up, and what it must buy with it."""

    max_quality_loss: float  # relative increase in held-out char perplexity
    min_speedup: float  # baseline latency / candidate latency
    max_size_ratio: float  # candidate bytes / baseline bytes


@dataclass(frozen=True)
class Speed:
    """A speed-up measured over paired rounds: its median, and whether the rounds agree.

    The effect is how far the median is from no change (1.0x); the spread is the range of
    the rounds. Where the spread exceeds the effect, the machine's noise is as large as what
    was measured, so no speed-up (or slow-down) is called: the result is inconclusive."""

    speedup: float
    spread: float

    @classmethod
    def of(cls, rounds: Sequence[float]) -> Speed:
        if not rounds:
            raise ValueError("speedup_rounds: a candidate needs paired latency rounds")
        return cls(statistics.median(rounds), max(rounds) - min(rounds))

    @property
    def conclusive(self) -> bool:
        return abs(self.speedup - 1) > self.spread

    @property
    def faster(self) -> bool:
        """Measurably faster than the baseline."""
        return self.conclusive and self.speedup > 1

    def __str__(self) -> str:
        return (f"{self.speedup:.2f}x ±{self.spread / 2:.2f}"
                + ("" if self.conclusive else " (inconclusive)"))


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    quality_loss: float
    speedup: float
    size_ratio: float
    reasons: tuple[str, ...]
    speed_spread: float = 0.0

    def to_dict(self) -> dict:
        # speed_conclusive is derived, written for whoever reads the result file.
        return asdict(self) | {"reasons": list(self.reasons),
                               "speed_conclusive": self.speed_conclusive}

    @classmethod
    def from_dict(cls, data: dict) -> GateVerdict:
        fields = {k: v for k, v in data.items() if k != "speed_conclusive"}
        return cls(**fields | {"reasons": tuple(data["reasons"])})

    @property
    def speed(self) -> Speed:
        return Speed(self.speedup, self.speed_spread)

    @property
    def speed_conclusive(self) -> bool:
        return self.speed.conclusive


def _speed_check(speed: Speed, min_speedup: float) -> tuple[bool, str]:
    """A demanded speed-up (min above 1x) must be measured; "no slower" (1x or less) fails
    only on a measured slow-down."""
    ok = (speed.conclusive and speed.speedup >= min_speedup if min_speedup > 1
          else speed.speedup >= min_speedup or not speed.conclusive)
    note = "" if speed.conclusive else ", inconclusive: the rounds' spread exceeds the effect"
    return ok, (f"speed-up {speed.speedup:.2f}x ±{speed.spread / 2:.2f}{note} vs min "
                f"{min_speedup:.2f}x")


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
    speed = Speed.of(candidate.speedup_rounds)
    ratio = candidate.size_bytes / baseline.size_bytes
    checks = [
        (loss <= budget.max_quality_loss,
         f"quality loss {loss:+.2%} vs max {budget.max_quality_loss:.2%} ({unit})"),
        _speed_check(speed, budget.min_speedup),
        (ratio <= budget.max_size_ratio,
         f"size ratio {ratio:.3f} vs max {budget.max_size_ratio:.3f}"),
    ]
    failed = [f"FAIL {text}" for ok, text in checks if not ok]
    passed = [f"ok {text}" for ok, text in checks if ok]
    return GateVerdict(passed=not failed, quality_loss=loss, speedup=speed.speedup,
                       size_ratio=ratio, reasons=tuple(failed + passed),
                       speed_spread=speed.spread)


POLICIES = ("smallest", "fastest")


def choose(candidates: Sequence[tuple[str, Measurement, GateVerdict]], policy: str,
           ) -> str | None:
    """The best passing candidate's name under the policy; None when none qualifies.

    `fastest` considers only candidates measurably faster than the baseline: a speed-up
    inside the noise is never a reason to pick one. `smallest` ranks by size, then by
    speed (an inconclusive one counts as no speed-up). Ties break on quality, then on the
    name (deterministic)."""
    if policy not in POLICIES:
        raise ValueError(f"compress_policy: {policy!r} is not one of {POLICIES}")
    eligible = [(name, m, v) for name, m, v in candidates
                if v.passed and (policy == "smallest" or v.speed.faster)]
    if not eligible:
        return None

    def key(item: tuple[str, Measurement, GateVerdict]) -> tuple:
        name, m, v = item
        speed = v.speedup if v.speed_conclusive else 1.0
        primary = (m.size_bytes, -speed) if policy == "smallest" else (-speed, m.size_bytes)
        return (*primary, m.char_perplexity, name)

    return min(eligible, key=key)[0]
