"""The promotion decision: a pure function of metrics and thresholds."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelMetrics:
    """Held-out quality of one model version."""

    perplexity: float
    char_perplexity: float
    distinct_1: float
    distinct_2: float
    similarity: float


@dataclass(frozen=True)
class Thresholds:
    """Absolute floors every promoted model meets, and the tolerated A/B regression."""

    max_perplexity: float
    min_distinct_2: float
    min_similarity: float
    max_regression: float


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"promote": self.promote, "reasons": list(self.reasons)}


def _absolute(m: ModelMetrics, t: Thresholds) -> list[tuple[bool, str]]:
    return [
        (m.perplexity <= t.max_perplexity,
         f"perplexity {m.perplexity:.2f} vs max {t.max_perplexity:.2f}"),
        (m.distinct_2 >= t.min_distinct_2,
         f"distinct-2 {m.distinct_2:.3f} vs min {t.min_distinct_2:.3f}"),
        (m.similarity >= t.min_similarity,
         f"similarity {m.similarity:.3f} vs min {t.min_similarity:.3f}"),
    ]


def _versus(c: ModelMetrics, champ: ModelMetrics, tol: float) -> list[tuple[bool, str]]:
    # Character-level perplexity: each run trains its own tokenizer, so token perplexities
    # of two versions are not on one scale.
    return [
        (c.char_perplexity <= champ.char_perplexity * (1 + tol),
         f"char perplexity {c.char_perplexity:.4f} vs champion {champ.char_perplexity:.4f}"
         f" (+{tol:.0%} allowed)"),
        (c.similarity >= champ.similarity - tol * abs(champ.similarity),
         f"similarity {c.similarity:.3f} vs champion {champ.similarity:.3f} (-{tol:.0%} allowed)"),
        (c.distinct_2 >= champ.distinct_2 * (1 - tol),
         f"distinct-2 {c.distinct_2:.3f} vs champion {champ.distinct_2:.3f} (-{tol:.0%} allowed)"),
    ]


def should_promote(challenger: ModelMetrics, champion: ModelMetrics | None,
                   thresholds: Thresholds) -> Decision:
    """Promote only if every absolute floor holds and, with a champion, nothing regresses
    beyond the tolerance. Reasons list each check, failed ones first."""
    checks = _absolute(challenger, thresholds)
    if champion is not None:
        checks += _versus(challenger, champion, thresholds.max_regression)
    failed = [f"FAIL {text}" for ok, text in checks if not ok]
    passed = [f"ok {text}" for ok, text in checks if ok]
    if champion is None:
        passed.append("no champion yet: absolute thresholds decide")
    return Decision(promote=not failed, reasons=tuple(failed + passed))


def metrics_dict(m: ModelMetrics) -> dict[str, float]:
    return asdict(m)
