"""The canary's statistics, valid however often a rollout looks: pure functions, no I/O.

A fixed-sample test run again at every analysis rejects a healthy challenger far more often
than its level says. Two remedies, one per kind of data:

- Counts (errors among requests, negative verdicts among feedback): an e-process. Each
  analysis contributes the conditional likelihood ratio of its 2x2 table (challenger and
  champion, bad and good) given the table's margins: under "the challenger is no worse"
  (odds ratio <= 1) the challenger's bad count is hypergeometric or stochastically smaller,
  whatever the common rate, so each ratio has expectation <= 1 and so has their running
  product. Mixing the products over a few odds ratios (a mixture SPRT) keeps that, and by
  Ville's inequality the probability that the mixture ever reaches 1/alpha is <= alpha, at
  whatever analyses it is read.
- Latencies: a one-sided Mann-Whitney rank test per analysis, its level spent over the
  analyses (alpha * 6 / (pi^2 k^2) at the k-th, which sums to alpha), so the union over all
  looks stays within alpha. Histogram buckets are ties: mid-ranks, tie-corrected variance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

# Odds ratios (challenger's bad odds over the champion's) the mixture bets on, equally
# weighted: from a modest rise to a broken challenger. Fewer points cost less evidence up
# front (log of their number); these were chosen with bench/canary_sim.py.
ODDS_RATIOS = (2.0, 4.0, 8.0, 16.0)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def conditional_log_ratios(bad_a: int, n_a: int, bad_b: int, n_b: int,
                           odds_ratios: Iterable[float] = ODDS_RATIOS) -> list[float]:
    """log P(bad_a | margins; odds ratio) / P(bad_a | margins; 1) for each odds ratio: the
    evidence of one 2x2 table that A's bad rate is above B's. A table whose margins leave
    one possible count (no data, no bad outcome, all bad) carries none (0)."""
    total = bad_a + bad_b
    low, high = max(0, total - n_b), min(n_a, total)
    base = [_log_comb(n_a, x) + _log_comb(n_b, total - x) for x in range(low, high + 1)]
    null = _logsumexp(base)
    out = []
    for ratio in odds_ratios:
        step = math.log(ratio)
        norm = _logsumexp([b + x * step for x, b in zip(range(low, high + 1), base, strict=True)])
        out.append(bad_a * step - norm + null)
    return out


@dataclass(frozen=True)
class Evidence:
    """Running evidence that the challenger's bad rate is above the champion's, with the
    rollout's totals it rests on (each analysis's counts are added exactly once)."""

    log_products: tuple[float, ...] = (0.0,) * len(ODDS_RATIOS)
    bad_challenger: int = 0
    n_challenger: int = 0
    bad_champion: int = 0
    n_champion: int = 0

    @property
    def value(self) -> float:
        """The mixture e-value: 1 before any data; reaching 1/alpha is significance alpha."""
        return sum(math.exp(v) for v in self.log_products) / len(self.log_products)

    def rate_challenger(self) -> float:
        return self.bad_challenger / self.n_challenger if self.n_challenger else 0.0

    def rate_champion(self) -> float:
        return self.bad_champion / self.n_champion if self.n_champion else 0.0

    def add(self, bad_challenger: int, n_challenger: int, bad_champion: int,
            n_champion: int) -> Evidence:
        """The evidence after one more analysis's new counts."""
        for bad, n in ((bad_challenger, n_challenger), (bad_champion, n_champion)):
            if not 0 <= bad <= n:
                raise ValueError(f"counts: {bad} bad of {n} is not a count")
        step = conditional_log_ratios(bad_challenger, n_challenger, bad_champion, n_champion)
        return Evidence(tuple(a + b for a, b in zip(self.log_products, step, strict=True)),
                        self.bad_challenger + bad_challenger,
                        self.n_challenger + n_challenger,
                        self.bad_champion + bad_champion, self.n_champion + n_champion)


def spent_alpha(alpha: float, look: int) -> float:
    """The level of the `look`-th analysis (1-based) so that all looks together spend alpha."""
    return alpha * 6 / (math.pi ** 2 * look ** 2)


Histogram = tuple[tuple[float, int], ...]  # (value or bucket bound, count)


def slower_p(challenger: Histogram, champion: Histogram) -> float:
    """One-sided Mann-Whitney U test: the p-value that the challenger's latencies are
    stochastically larger than the champion's. Equal values (a histogram bucket) share their
    mid-rank; normal approximation with the tie correction and a continuity correction.
    No data on a side or no spread at all: 1.0."""
    counts: dict[float, list[int]] = {}
    for side, hist in enumerate((challenger, champion)):
        for value, count in hist:
            counts.setdefault(value, [0, 0])[side] += count
    n_a, n_b = sum(c for _, c in challenger), sum(c for _, c in champion)
    n = n_a + n_b
    if not n_a or not n_b:
        return 1.0
    rank_sum, below, ties = 0.0, 0, 0.0
    for value in sorted(counts):
        a, b = counts[value]
        t = a + b
        rank_sum += a * (below + (t + 1) / 2)
        below += t
        ties += t ** 3 - t
    u = rank_sum - n_a * (n_a + 1) / 2
    variance = n_a * n_b / 12 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0:
        return 1.0
    z = (u - n_a * n_b / 2 - 0.5) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2))
