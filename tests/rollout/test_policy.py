"""The canary step decision and its online A/B tests, on both sides of every rule."""

from dataclasses import replace

import pytest

from tasks.config import ConfigError, LifecycleConfig
from tasks.rollout.policy import (
    RULES,
    Action,
    CanaryPolicy,
    CanaryState,
    Observation,
    next_canary_step,
)

POLICY = CanaryPolicy()
START = CanaryState()
BAR = RULES / POLICY.alpha  # evidence a count rule needs
# 200 requests, latencies 1..200 ms once each
LATENCIES = tuple((float(ms), 1) for ms in range(1, 201))
HEALTHY = Observation(requests=200, errors=2, p99_ms=198.0, feedback_positive=80,
                      feedback_total=100, latencies=LATENCIES)


def _step(challenger: Observation, state: CanaryState = START,
          champion: Observation = HEALTHY, policy: CanaryPolicy = POLICY):
    return next_canary_step(state, champion, challenger, policy)


def _slower(factor: float, p99_ms: float, n: int = 200) -> Observation:
    return replace(HEALTHY, requests=n, p99_ms=p99_ms,
                   latencies=tuple((ms * factor, c) for ms, c in LATENCIES[:n]))


def test_a_healthy_challenger_walks_every_step_then_is_promoted():
    state, weights = CanaryState(), []
    for _ in POLICY.steps:
        decision = _step(HEALTHY, state)
        weights.append(decision.weight)
        state = decision.state
    assert weights == [25, 50, 100, 100]
    assert decision.action is Action.PROMOTE
    assert len(state.history) == len(POLICY.steps)


def test_a_failing_challenger_is_rolled_back_at_once_to_zero():
    broken = Observation(requests=200, errors=200, p99_ms=100.0)
    decision = _step(broken, CanaryState(step=2))
    assert decision.action is Action.ROLLBACK and decision.weight == 0
    assert decision.reasons[0].startswith("FAIL error rate")


@pytest.mark.parametrize(("errors", "action"), [(6, Action.ADVANCE), (20, Action.ROLLBACK)])
def test_error_rate_rule_on_both_sides(errors, action):
    # Champion 1%: 3% is within +2%; 10% is beyond it and the evidence is past the bar.
    decision = _step(replace(HEALTHY, errors=errors))
    assert decision.action is action
    assert decision.state.evidence.errors.value >= BAR or action is Action.ADVANCE


def test_a_significant_rise_within_the_allowance_does_not_roll_back():
    champion = replace(HEALTHY, requests=1000, errors=10)
    decision = _step(replace(HEALTHY, requests=1000, errors=30), champion=champion)
    assert decision.state.evidence.errors.value >= BAR  # 3% vs 1%: real, but allowed
    assert decision.action is Action.ADVANCE


def test_an_error_excess_that_is_not_significant_does_not_roll_back():
    few = replace(HEALTHY, requests=50, errors=2)  # 4% of 50 vs 1% of 200
    decision = _step(few)
    assert decision.state.evidence.errors.value < BAR
    assert decision.action is Action.ADVANCE


def test_evidence_adds_up_over_analyses_and_steps_and_rolls_back_later():
    # 8% against 0%, 50 requests each per analysis: no single analysis is decisive, the
    # rollout's evidence is; it survives the step's counters starting again.
    champion = Observation(requests=50, errors=0, p99_ms=1.0)
    challenger = Observation(requests=50, errors=4, p99_ms=1.0)
    first = _step(challenger, champion=champion)
    assert first.action is Action.ADVANCE and first.state.evidence.errors.value < BAR
    second = _step(challenger, first.state, champion=champion)
    assert second.action is Action.ROLLBACK
    assert second.state.evidence.errors.n_challenger == 100
    assert second.state.analyses == 2


def test_a_hold_counts_only_what_the_step_added_since_the_last_analysis():
    champion = Observation(requests=30, errors=0, p99_ms=1.0)
    challenger = Observation(requests=30, errors=1, p99_ms=1.0)
    held = _step(challenger, champion=champion)
    assert held.action is Action.HOLD
    again = _step(challenger, held.state, champion=champion)  # nothing new arrived
    assert again.state.evidence == held.state.evidence
    grown = _step(replace(challenger, requests=60, errors=1), held.state,
                  champion=replace(champion, requests=60))
    assert grown.state.evidence.errors.n_challenger == 60
    assert grown.state.evidence.errors.n_champion == 60


def test_counters_reset_by_a_restart_count_from_zero():
    held = _step(Observation(requests=30, errors=0, p99_ms=1.0),
                 champion=Observation(requests=30, errors=0, p99_ms=1.0))
    after = _step(Observation(requests=10, errors=0, p99_ms=1.0), held.state,
                  champion=Observation(requests=12, errors=0, p99_ms=1.0))
    assert after.state.evidence.errors.n_challenger == 40
    assert after.state.evidence.errors.n_champion == 42


def test_at_full_weight_the_stand_in_champion_adds_no_evidence():
    last = CanaryState(step=len(POLICY.steps) - 1)
    decision = _step(HEALTHY, last)
    assert decision.state.evidence == last.evidence
    assert decision.action is Action.PROMOTE


@pytest.mark.parametrize(("p99", "action"), [(297.0, Action.ADVANCE), (298.0, Action.ROLLBACK)])
def test_latency_rule_on_both_sides(p99, action):
    # Every latency 1.5x the champion's: the rank test is sure; the P99 ratio decides.
    decision = _step(_slower(1.5, p99))
    assert decision.action is action
    if action is Action.ROLLBACK:
        assert decision.reasons[0].startswith("FAIL P99")


def test_a_p99_past_the_ratio_without_slower_latencies_does_not_roll_back():
    # One slow outlier lifts the P99 of a small sample; the rank test sees no shift.
    outlier = replace(HEALTHY, p99_ms=1000.0,
                      latencies=(*LATENCIES[:-1], (1000.0, 1)))
    decision = _step(outlier)
    assert decision.action is Action.ADVANCE
    assert any("P99" in r and "rank test" in r for r in decision.reasons)


@pytest.mark.parametrize(("positive", "action"), [(75, Action.ADVANCE), (50, Action.ROLLBACK)])
def test_feedback_ab_test_on_both_sides(positive, action):
    # Champion 20% negative; 25% of 100 is not significantly worse, 50% is.
    decision = _step(replace(HEALTHY, feedback_positive=positive))
    assert decision.action is action
    assert any("negative feedback" in r for r in decision.reasons)


def test_too_little_feedback_is_not_judged():
    sparse = replace(HEALTHY, feedback_positive=0, feedback_total=POLICY.min_feedback - 1)
    decision = _step(sparse)
    assert decision.action is Action.ADVANCE
    assert not any("feedback" in r for r in decision.reasons)


def test_no_data_holds_a_bounded_number_of_times_then_rolls_back():
    quiet = Observation(requests=POLICY.min_requests - 1, errors=0, p99_ms=1.0)
    state = CanaryState(step=1)
    for held in range(1, POLICY.max_holds + 1):
        decision = _step(quiet, state)
        assert decision.action is Action.HOLD and decision.weight == POLICY.steps[1]
        state = decision.state
        assert state.holds == held and state.step == 1
    decision = _step(quiet, state)
    assert decision.action is Action.ROLLBACK and decision.weight == 0


def test_a_clearly_broken_challenger_rolls_back_before_it_has_enough_traffic():
    broken = Observation(requests=4, errors=4, p99_ms=1.0)
    decision = _step(broken)
    assert broken.requests < POLICY.min_requests
    assert decision.action is Action.ROLLBACK and decision.reasons[0].startswith("FAIL error")


def test_one_error_in_a_small_sample_only_holds():
    decision = _step(Observation(requests=10, errors=1, p99_ms=1.0))
    assert decision.action is Action.HOLD


@pytest.mark.parametrize(("requests", "action"), [
    (POLICY.min_latency_samples - 1, Action.HOLD), (POLICY.min_latency_samples, Action.ROLLBACK)])
def test_a_slow_challenger_is_judged_once_it_has_latency_samples(requests, action):
    slow = replace(_slower(50.0, 1000.0, requests), errors=0, feedback_total=0,
                   feedback_positive=0)
    assert _step(slow).action is action


def test_no_data_on_the_champion_side_also_holds():
    quiet_champion = Observation(requests=0, errors=0, p99_ms=0.0)
    assert _step(HEALTHY, champion=quiet_champion).action is Action.HOLD


def test_enough_data_after_a_hold_resets_the_hold_count():
    decision = _step(HEALTHY, CanaryState(step=0, holds=2))
    assert decision.action is Action.ADVANCE and decision.state.holds == 0


@pytest.mark.parametrize("steps", [(), (5, 25), (25, 5, 100), (0, 50, 100), (5, 5, 100)])
def test_policy_refuses_step_lists_that_do_not_rise_to_100(steps):
    with pytest.raises(ValueError, match="steps"):
        CanaryPolicy(steps=steps)


def test_a_lone_full_step_is_refused_with_the_reason_in_policy_and_config():
    with pytest.raises(ValueError, match="champion serves nothing"):
        CanaryPolicy(steps=(100,))
    with pytest.raises(ConfigError, match=r"canary_steps: \[100\].*champion serves nothing"):
        LifecycleConfig(canary_steps=[100])
