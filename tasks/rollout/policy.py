"""The canary step decision and the online A/B tests behind it: pure functions, no I/O.

The rollout's false-rollback probability stays within `alpha` however many analyses run:
alpha is split evenly over the three rules (errors, negative feedback, latency), the count
rules read e-processes and the latency rule spends its share over the analyses
(tasks.rollout.stats)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from tasks.rollout.stats import Evidence, Histogram, slower_p, spent_alpha

RULES = 3  # errors, negative feedback, latency: each gets alpha / RULES


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
    latencies: Histogram = ()  # per-request latencies (ms) or histogram buckets, with counts

    @property
    def latency_samples(self) -> int:
        return sum(count for _, count in self.latencies)

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
    min_latency_samples: int = 20  # per version before the latency rule judges
    max_holds: int = 3  # intervals without enough data before giving up (rollback)
    max_error_rate_increase: float = 0.02  # absolute, challenger minus champion
    max_p99_ratio: float = 1.5  # challenger P99 over champion P99
    min_feedback: int = 20  # feedback per version before the A/B test on it counts
    alpha: float = 0.05  # false-rollback probability of the whole rollout, at most

    def __post_init__(self) -> None:
        problem = steps_problem(self.steps)
        if problem:
            raise ValueError(f"steps: {list(self.steps)} {problem}")


def steps_problem(steps: tuple[int, ...] | list[int]) -> str | None:
    """Why a list of traffic steps cannot run a canary, or None."""
    if not steps or list(steps) != sorted(set(steps)) or steps[0] <= 0 or steps[-1] != 100:
        return "must rise strictly from above 0 to 100"
    if len(steps) == 1:
        return ("needs a step below 100: at 100 % the champion serves nothing, so there is "
                "no traffic to compare the challenger with")
    return None


@dataclass(frozen=True)
class CanaryEvidence:
    errors: Evidence = Evidence()  # errors among requests
    feedback: Evidence = Evidence()  # negative verdicts among feedback


@dataclass(frozen=True)
class CanaryState:
    step: int = 0  # index into policy.steps
    holds: int = 0  # consecutive intervals held at this step
    history: tuple[str, ...] = field(default_factory=tuple)
    analyses: int = 0  # in the whole rollout: the latency rule's look number
    evidence: CanaryEvidence = CanaryEvidence()
    # The step's cumulative (champion, challenger) at its last analysis; None as it starts.
    seen: tuple[Observation, Observation] | None = None


@dataclass(frozen=True)
class CanaryDecision:
    action: Action
    state: CanaryState
    weight: int  # challenger traffic percent after this decision
    reasons: tuple[str, ...]


def _rules_alpha(policy: CanaryPolicy) -> float:
    return policy.alpha / RULES


def _count_checks(evidence: CanaryEvidence, policy: CanaryPolicy) -> list[tuple[bool, str]]:
    """The error and negative-feedback rules, on the rollout's evidence so far."""
    checks = []
    bar = 1 / _rules_alpha(policy)
    errors = evidence.errors
    if errors.n_challenger and errors.n_champion:
        # Evidence guards small samples (3 errors in 3 requests against a clean champion is
        # already decisive, 1 in 20 is not); the allowed rise keeps a significant but
        # harmless difference from rolling back.
        increase = errors.rate_challenger() - errors.rate_champion()
        checks.append((
            increase <= policy.max_error_rate_increase or errors.value < bar,
            f"error rate {errors.rate_challenger():.3%} vs champion {errors.rate_champion():.3%}"
            f" over the rollout (+{policy.max_error_rate_increase:.1%} allowed; evidence "
            f"{errors.value:.3g}, significant at {bar:.0f})"))
    feedback = evidence.feedback
    if min(feedback.n_challenger, feedback.n_champion) >= policy.min_feedback:
        checks.append((feedback.value < bar,
                       f"negative feedback {feedback.rate_challenger():.1%} vs champion "
                       f"{feedback.rate_champion():.1%} over the rollout (evidence "
                       f"{feedback.value:.3g}, significant at {bar:.0f})"))
    return checks


def _latency_check(champion: Observation, challenger: Observation, policy: CanaryPolicy,
                   look: int) -> list[tuple[bool, str]]:
    """Slower only if the P99 ratio is past the limit and the rank test says so at this
    analysis's share of the level (a P99 of a few dozen requests is mostly noise)."""
    if min(challenger.latency_samples, champion.latency_samples) < policy.min_latency_samples:
        return []
    level = spent_alpha(_rules_alpha(policy), look)
    p = slower_p(challenger.latencies, champion.latencies)
    ratio_ok = challenger.p99_ms <= policy.max_p99_ratio * champion.p99_ms
    return [(ratio_ok or p >= level,
             f"P99 {challenger.p99_ms:.1f} ms vs champion {champion.p99_ms:.1f} ms "
             f"(x{policy.max_p99_ratio} allowed; rank test p={p:.3g}, level {level:.3g})")]


def _new_counts(now: Observation, seen: Observation | None) -> Observation:
    """What an analysis adds to the step's cumulative observation; all of it after a
    server restart reset the counters."""
    if seen is None or now.requests < seen.requests or now.feedback_total < seen.feedback_total:
        return now
    return Observation(now.requests - seen.requests, now.errors - seen.errors, now.p99_ms,
                       now.feedback_positive - seen.feedback_positive,
                       now.feedback_total - seen.feedback_total)


def _with_analysis(state: CanaryState, champion: Observation, challenger: Observation,
                   concurrent: bool) -> CanaryState:
    """The state after adding this analysis's new counts to the rollout's evidence. Only
    traffic served side by side compares: at 100 % the champion serves nothing new."""
    evidence = state.evidence
    if concurrent:
        seen = state.seen or (None, None)
        champ, chall = _new_counts(champion, seen[0]), _new_counts(challenger, seen[1])
        evidence = CanaryEvidence(
            evidence.errors.add(chall.errors, chall.requests, champ.errors, champ.requests),
            evidence.feedback.add(chall.negative_feedback, chall.feedback_total,
                                  champ.negative_feedback, champ.feedback_total))
    return replace(state, evidence=evidence, seen=(champion, challenger),
                   analyses=state.analyses + 1)


def next_canary_step(state: CanaryState, champion: Observation, challenger: Observation,
                     policy: CanaryPolicy) -> CanaryDecision:
    """Advance, hold, roll back or promote after one analysis interval.

    Observations are cumulative since the step began (at 100 % the champion's is its last
    step's). A failed rule rolls back at once, on whatever evidence there is; advancing needs
    `min_requests` on both versions. Too little traffic holds (never advances on no data)
    and, after `max_holds` holds, rolls back."""
    weight = policy.steps[state.step]
    state = _with_analysis(state, champion, challenger, concurrent=weight < 100)
    checks = (_count_checks(state.evidence, policy)
              + _latency_check(champion, challenger, policy, state.analyses))
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
    nxt = replace(state, step=state.step + 1, holds=0, seen=None)
    return _decide(nxt, Action.ADVANCE, policy.steps[nxt.step], passed)


def _decide(state: CanaryState, action: Action, weight: int, reasons: tuple[str, ...],
            ) -> CanaryDecision:
    entry = f"{action.value} -> {weight}%: " + "; ".join(reasons)
    return CanaryDecision(action=action, weight=weight, reasons=reasons,
                          state=replace(state, history=(*state.history, entry)))
