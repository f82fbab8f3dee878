"""The canary step decision and its online A/B test, on both sides of every rule."""

import pytest

from tasks.rollout.policy import (
    Action,
    CanaryPolicy,
    CanaryState,
    Observation,
    next_canary_step,
    worse_proportion_p,
)

POLICY = CanaryPolicy()
START = CanaryState()
HEALTHY = Observation(requests=200, errors=2, p99_ms=100.0, feedback_positive=80,
                      feedback_total=100)


def _step(challenger: Observation, state: CanaryState = START,
          champion: Observation = HEALTHY, policy: CanaryPolicy = POLICY):
    return next_canary_step(state, champion, challenger, policy)


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


@pytest.mark.parametrize(("errors", "action"), [(6, Action.ADVANCE), (12, Action.ROLLBACK)])
def test_error_rate_rule_on_both_sides(errors, action):
    # Champion 1%: 3% is within +2%, 6% is beyond it and significant.
    assert _step(Observation(requests=200, errors=errors, p99_ms=100.0)).action is action


def test_an_error_excess_that_is_not_significant_does_not_roll_back():
    few = Observation(requests=50, errors=2, p99_ms=100.0)  # 4% of 50 vs 1% of 200
    assert worse_proportion_p(2, 50, 2, 200) > POLICY.alpha
    assert _step(few).action is Action.ADVANCE


@pytest.mark.parametrize(("p99", "action"), [(150.0, Action.ADVANCE), (151.0, Action.ROLLBACK)])
def test_latency_rule_on_both_sides(p99, action):
    decision = _step(Observation(requests=200, errors=2, p99_ms=p99))
    assert decision.action is action
    if action is Action.ROLLBACK:
        assert decision.reasons[0].startswith("FAIL P99")


@pytest.mark.parametrize(("positive", "action"), [(75, Action.ADVANCE), (60, Action.ROLLBACK)])
def test_feedback_ab_test_on_both_sides(positive, action):
    # Champion 20% negative; 25% of 100 is not significantly worse, 40% is.
    challenger = Observation(requests=200, errors=2, p99_ms=100.0, feedback_positive=positive,
                             feedback_total=100)
    decision = _step(challenger)
    assert decision.action is action
    assert any("negative feedback" in r for r in decision.reasons)


def test_too_little_feedback_is_not_judged():
    sparse = Observation(requests=200, errors=2, p99_ms=100.0, feedback_positive=0,
                         feedback_total=POLICY.min_feedback - 1)
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
    slow = Observation(requests=requests, errors=0, p99_ms=1000.0)
    assert _step(slow).action is action


def test_no_data_on_the_champion_side_also_holds():
    quiet_champion = Observation(requests=0, errors=0, p99_ms=0.0)
    assert _step(HEALTHY, champion=quiet_champion).action is Action.HOLD


def test_enough_data_after_a_hold_resets_the_hold_count():
    decision = _step(HEALTHY, CanaryState(step=0, holds=2))
    assert decision.action is Action.ADVANCE and decision.state.holds == 0


def test_fisher_test_edges():
    assert worse_proportion_p(0, 0, 1, 10) == 1.0
    assert worse_proportion_p(0, 10, 0, 10) == 1.0  # no variance, no evidence
    assert worse_proportion_p(50, 100, 10, 100) < 1e-6
    assert worse_proportion_p(10, 100, 50, 100) > 0.999


@pytest.mark.parametrize("steps", [(), (5, 25), (25, 5, 100), (0, 50, 100), (5, 5, 100)])
def test_policy_refuses_step_lists_that_do_not_rise_to_100(steps):
    with pytest.raises(ValueError, match="steps"):
        CanaryPolicy(steps=steps)
