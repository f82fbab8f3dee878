"""The compression gate and the candidate choice, on both sides of every threshold."""

import pytest

from tasks.compress.gate import (
    CompressionBudget,
    GateVerdict,
    Measurement,
    choose,
    passes_compression_gate,
)

BASE = Measurement(perplexity=10.0, char_perplexity=2.0, size_bytes=1000, latency_ms=20.0,
                   tokenizer="vocab-a")
BUDGET = CompressionBudget(max_quality_loss=0.01, min_speedup=1.5, max_size_ratio=0.5)


def _gate(budget: CompressionBudget = BUDGET, **change) -> GateVerdict:
    fields = {"perplexity": 10.05, "char_perplexity": 2.0, "size_bytes": 400,
              "latency_ms": 10.0, "tokenizer": "vocab-a",
              "speedup_rounds": (1.95, 2.0, 2.05)} | change
    return passes_compression_gate(BASE, Measurement(**fields), budget)


def test_a_candidate_within_every_threshold_passes():
    verdict = _gate()
    assert verdict.passed
    assert verdict.quality_loss == pytest.approx(0.005)
    assert verdict.speedup == pytest.approx(2.0)
    assert verdict.size_ratio == pytest.approx(0.4)
    assert all(r.startswith("ok ") for r in verdict.reasons)


@pytest.mark.parametrize(("field", "inside", "outside", "label"), [
    ("perplexity", 10.099, 10.101, "quality loss"),
    ("speedup_rounds", (1.49, 1.501, 1.51), (1.49, 1.499, 1.51), "speed-up"),
    ("size_bytes", 500, 501, "size ratio"),
])
def test_each_threshold_decides_on_its_edge(field, inside, outside, label):
    assert _gate(**{field: inside}).passed
    verdict = _gate(**{field: outside})
    assert not verdict.passed
    assert verdict.reasons[0].startswith(f"FAIL {label}")
    assert sum(r.startswith("FAIL") for r in verdict.reasons) == 1


def test_better_quality_than_the_baseline_is_no_loss():
    assert _gate(perplexity=9.0).quality_loss < 0 and _gate(perplexity=9.0).passed


def test_another_vocabulary_is_judged_per_character():
    # Token perplexity 30 would be a 200% loss, but tokens differ: 2.019 chars is +0.95%.
    verdict = _gate(tokenizer="vocab-b", perplexity=30.0, char_perplexity=2.019)
    assert verdict.passed and verdict.quality_loss == pytest.approx(0.0095)
    assert verdict.reasons[0].endswith("(char perplexity)")
    assert not _gate(tokenizer="vocab-b", perplexity=10.0, char_perplexity=2.021).passed


def test_a_speed_up_inside_the_rounds_spread_is_inconclusive():
    # Median 1.6x, but the rounds range over 2.0: they disagree even on the direction.
    noisy = (0.5, 1.6, 2.5)
    verdict = _gate(speedup_rounds=noisy)
    assert not verdict.passed and not verdict.speed_conclusive
    assert verdict.reasons[0] == ("FAIL speed-up 1.60x ±1.00, inconclusive: the rounds' "
                                  "spread exceeds the effect vs min 1.50x")
    # "No slower" fails only on a measured slow-down: noise is not one.
    no_slower = CompressionBudget(max_quality_loss=0.01, min_speedup=1.0, max_size_ratio=0.5)
    assert _gate(no_slower, speedup_rounds=noisy).passed
    assert _gate(no_slower, speedup_rounds=(0.97, 0.96, 0.95)).passed is False
    assert _gate(no_slower, speedup_rounds=(0.9, 1.1, 0.95)).passed


def _candidate(name, size, latency, ppl=10.0, passed=True, spread=0.0):
    m = Measurement(perplexity=ppl, char_perplexity=ppl / 5, size_bytes=size,
                    latency_ms=latency, tokenizer="vocab-a")
    speedup = 20.0 / latency
    return name, m, GateVerdict(passed, 0, speedup, 0, (), speed_spread=spread)


def test_policy_picks_the_smallest_or_the_fastest_passing_candidate():
    cands = [_candidate("small", 100, 15), _candidate("fast", 300, 5),
             _candidate("failed", 10, 1, passed=False)]
    assert choose(cands, "smallest") == "small"
    assert choose(cands, "fastest") == "fast"


def test_ties_break_on_the_other_criterion_then_quality():
    cands = [_candidate("a", 100, 9, ppl=11), _candidate("b", 100, 8, ppl=12),
             _candidate("c", 100, 8, ppl=10)]
    assert choose(cands, "smallest") == "c"


def test_a_noisy_speed_up_is_never_the_reason_to_choose_a_candidate():
    cands = [_candidate("noisy-fast", 300, 5, spread=4.0), _candidate("slightly", 200, 18)]
    assert choose(cands, "fastest") == "slightly"  # 1.11x, measured
    assert choose(cands[:1], "fastest") is None
    # It may still win on size.
    assert choose([_candidate("noisy-small", 50, 19, spread=1.0), *cands], "smallest") == (
        "noisy-small")


def test_no_passing_candidate_chooses_none_and_unknown_policy_is_refused():
    assert choose([_candidate("x", 1, 1, passed=False)], "smallest") is None
    assert choose([], "fastest") is None
    with pytest.raises(ValueError, match="compress_policy"):
        choose([], "cheapest")
