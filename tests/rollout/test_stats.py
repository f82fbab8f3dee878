"""The canary's statistics: the e-process keeps its level however often it is read, and the
rank test agrees with a reference implementation."""

import math

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from tasks.rollout.stats import (
    ODDS_RATIOS,
    Evidence,
    conditional_log_ratios,
    slower_p,
    spent_alpha,
)


def _binom(n: int, p: float) -> list[float]:
    return [math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(n + 1)]


def _expected_ratio(n_a: int, p_a: float, n_b: int, p_b: float) -> list[float]:
    """Exact expectation of each odds ratio's likelihood ratio over every 2x2 table."""
    sums = [0.0] * len(ODDS_RATIOS)
    for a, pa in enumerate(_binom(n_a, p_a)):
        for b, pb in enumerate(_binom(n_b, p_b)):
            for i, log_ratio in enumerate(conditional_log_ratios(a, n_a, b, n_b)):
                sums[i] += pa * pb * math.exp(log_ratio)
    return sums


@pytest.mark.parametrize(("n_a", "p_a", "n_b", "p_b"), [
    (20, 0.05, 20, 0.05), (10, 0.3, 60, 0.3), (30, 0.01, 5, 0.2), (15, 0.1, 40, 0.1)])
def test_each_analysis_is_an_e_value_when_the_challenger_is_no_worse(n_a, p_a, n_b, p_b):
    assert all(e <= 1 + 1e-9 for e in _expected_ratio(n_a, p_a, n_b, p_b))


def test_a_worse_challenger_gains_evidence_in_expectation():
    assert all(e > 1.5 for e in _expected_ratio(50, 0.1, 50, 0.01))


def test_reading_the_evidence_at_every_analysis_keeps_the_false_alarm_rate():
    # 20 analyses of an A/A rollout, read after each: Ville's bound says <= alpha.
    rng, alpha, crossed = np.random.default_rng(7), 0.05, 0
    for _ in range(2000):
        evidence = Evidence()
        for _ in range(20):
            n_a, n_b = int(rng.integers(5, 80)), int(rng.integers(5, 80))
            evidence = evidence.add(int(rng.binomial(n_a, 0.08)), n_a,
                                    int(rng.binomial(n_b, 0.08)), n_b)
            if evidence.value >= 1 / alpha:
                crossed += 1
                break
    assert crossed / 2000 <= alpha


def test_tables_with_one_possible_count_carry_no_evidence():
    for table in [(0, 0, 3, 10), (0, 10, 0, 10), (10, 10, 10, 10), (0, 10, 0, 0)]:
        assert conditional_log_ratios(*table) == [0.0] * len(ODDS_RATIOS)
    assert Evidence().value == 1.0


def test_evidence_keeps_the_rollouts_totals_and_refuses_impossible_counts():
    evidence = Evidence().add(3, 50, 1, 950).add(2, 50, 0, 950)
    assert (evidence.bad_challenger, evidence.n_challenger) == (5, 100)
    assert evidence.rate_champion() == pytest.approx(1 / 1900)
    with pytest.raises(ValueError, match="6 bad of 5"):
        evidence.add(6, 5, 0, 10)


def test_rank_test_matches_scipys_mann_whitney_with_ties():
    rng = np.random.default_rng(3)
    slow = np.round(rng.lognormal(0.2, 0.5, 60), 1)
    base = np.round(rng.lognormal(0.0, 0.5, 80), 1)
    ours = slower_p(tuple((float(v), 1) for v in slow), tuple((float(v), 1) for v in base))
    theirs = mannwhitneyu(slow, base, alternative="greater", method="asymptotic",
                          use_continuity=True).pvalue
    assert ours == pytest.approx(theirs, rel=1e-9)
    assert ours < 0.05


def test_rank_test_on_buckets_and_edges():
    faster = ((10.0, 40), (25.0, 10))
    slower = ((10.0, 10), (25.0, 30), (50.0, 10))
    assert slower_p(slower, faster) < 1e-6
    assert slower_p(faster, slower) > 0.999
    assert slower_p(((10.0, 5),), ((10.0, 7),)) == 1.0  # no spread: no evidence
    assert slower_p((), faster) == 1.0


def test_spent_levels_sum_to_at_most_alpha():
    assert sum(spent_alpha(0.05, k) for k in range(1, 100_000)) <= 0.05
    assert spent_alpha(0.05, 1) > spent_alpha(0.05, 2)
