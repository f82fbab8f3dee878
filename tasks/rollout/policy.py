"""The canary step decision and the online A/B test behind it: pure functions, no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum


class Action(StrEnum):
    ADVANCE = "advance"  # move to the next traffic step
    HOLD = "hold"  # stay at this step and observe again
    ROLLBACK = "rollback"  # challenger weight to 0; champion untouched
    PROMOTE = "promote"  # the last step passed: challenger becomes champion


@dataclass(frozen=True)
class Observation:
    """One version's traffic during an analysis interval."""

    requests: int
    errors: int
    p99_ms: float
    feedback_positive: int = 0
    feedback_total: int = 0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def negative_feedback(self) -> int:
        return self.feedback_total - self.feedback_positive

    @property
    def negative_rate(self) -> float:
        return self.negative_feedback / self.feedback_total if self.feedback_total else 0.0


@dataclass(frozen=True)
class CanaryPolicy:
    steps: tuple[int, ...] = (5, 25, 50, 100)  # challenger traffic percent per step
    min_requests: int = 50  # per version at a step before it may advance
    min_latency_samples: int = 20  # per version before the P99 rule judges
    max_holds: int = 3  # intervals without enough data before giving up (rollback)
    max_error_rate_increase: float = 0.02  # absolute, challenger minus champion
    max_p99_ratio: float = 1.5  # challenger P99 over champion P99
    min_feedback: int = 20  # feedback per version before the A/B test on it counts
    alpha: float = 0.05  # one-sided significance of "challenger is worse"

    def __post_init__(self) -> None:
        if not self.steps or list(self.steps) != sorted(set(self.steps)) or not (
                self.steps[0] > 0 and self.steps[-1] == 100):
            raise ValueError(f"steps: {self.steps} must rise strictly from above 0 to 100")


@dataclass(frozen=True)
class CanaryState:
    step: int = 0  # index into policy.steps
    holds: int = 0  # consecutive intervals held at this step
    history: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class CanaryDecision:
    action: Action
    state: CanaryState
    weight: int  # challenger traffic percent after this decision
    reasons: tuple[str, ...]


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def worse_proportion_p(bad_a: int, n_a: int, bad_b: int, n_b: int) -> float:
    """One-sided Fisher exact test: p-value that A's bad-rate is above B's.

    Exact at any sample size (a canary's first step sees few challenger requests, where
    the normal approximation overstates significance). No data or no bad outcome: 1.0."""
    if not n_a or not n_b:
        return 1.0
    total, bad = n_a + n_b, bad_a + bad_b
    base = _log_comb(total, n_a)
    tail = sum(math.exp(_log_comb(bad, k) + _log_comb(total - bad, n_a - k) - base)
               for k in range(bad_a, min(bad, n_a) + 1))
    return min(1.0, tail)


def _checks(champion: Observation, challenger: Observation, policy: CanaryPolicy,
            ) -> list[tuple[bool, str]]:
    """(ok, text) for each rule the challenger must meet against the champion; a rule is
    judged only once both sides have the data it needs."""
    checks = []
    if min(challenger.requests, champion.requests) > 0:
        # Significance guards small samples: 3 errors in 3 requests against a clean champion
        # is already decisive, 1 in 20 is not.
        increase = challenger.error_rate - champion.error_rate
        p_errors = worse_proportion_p(challenger.errors, challenger.requests, champion.errors,
                                      champion.requests)
        checks.append((
            increase <= policy.max_error_rate_increase or p_errors >= policy.alpha,
            f"error rate {challenger.error_rate:.3%} vs champion {champion.error_rate:.3%} "
            f"(+{policy.max_error_rate_increase:.1%} allowed; one-sided p={p_errors:.3g})"))
    if min(challenger.requests, champion.requests) >= policy.min_latency_samples:
        checks.append((challenger.p99_ms <= policy.max_p99_ratio * champion.p99_ms,
                       f"P99 {challenger.p99_ms:.1f} ms vs champion {champion.p99_ms:.1f} ms "
                       f"(x{policy.max_p99_ratio} allowed)"))
    if min(challenger.feedback_total, champion.feedback_total) >= policy.min_feedback:
        p_feedback = worse_proportion_p(challenger.negative_feedback, challenger.feedback_total,
                                        champion.negative_feedback, champion.feedback_total)
        checks.append((p_feedback >= policy.alpha,
                       f"negative feedback {challenger.negative_rate:.1%} vs champion "
                       f"{champion.negative_rate:.1%} (one-sided p={p_feedback:.3g}, "
                       f"alpha {policy.alpha})"))
    return checks


def next_canary_step(state: CanaryState, champion: Observation, challenger: Observation,
                     policy: CanaryPolicy) -> CanaryDecision:
    """Advance, hold, roll back or promote after one analysis interval.

    Observations are cumulative since the step began. A failed rule rolls back at once, on
    whatever data it has; advancing needs `min_requests` on both versions. Too little
    traffic holds (never advances on no data) and, after `max_holds` holds, rolls back."""
    weight = policy.steps[state.step]
    checks = _checks(champion, challenger, policy)
    failed = tuple(f"FAIL {text}" for ok, text in checks if not ok)
    passed = tuple(f"ok {text}" for ok, text in checks if ok)
    if failed:
        return _decide(state, Action.ROLLBACK, 0, failed + passed)
    if min(champion.requests, challenger.requests) < policy.min_requests:
        reason = (f"not enough traffic at {weight}%: champion {champion.requests}, challenger "
                  f"{challenger.requests} requests (need {policy.min_requests} each)")
        if state.holds + 1 > policy.max_holds:
            return _decide(state, Action.ROLLBACK, 0,
                           (f"FAIL {reason}; held {state.holds} times already",))
        return _decide(replace(state, holds=state.holds + 1), Action.HOLD, weight,
                       (f"hold {reason}",))
    if state.step + 1 == len(policy.steps):
        return _decide(state, Action.PROMOTE, 100, passed)
    nxt = replace(state, step=state.step + 1, holds=0)
    return _decide(nxt, Action.ADVANCE, policy.steps[nxt.step], passed)


def _decide(state: CanaryState, action: Action, weight: int, reasons: tuple[str, ...],
            ) -> CanaryDecision:
    entry = f"{action.value} -> {weight}%: " + "; ".join(reasons)
    return CanaryDecision(action=action, weight=weight, reasons=reasons,
                          state=replace(state, history=(*state.history, entry)))
