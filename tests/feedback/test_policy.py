"""retrain_needed on both sides of every rule."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tasks.config import FeedbackConfig
from tasks.feedback.policy import FeedbackStats, retrain_needed

POLICY = FeedbackConfig()
QUIET = FeedbackStats(champion="3", new_usable=10, recent_feedback=100, recent_negative=20,
                      baseline_feedback=100, baseline_negative=20, recent_responses=200,
                      recent_diversity=0.8, baseline_responses=200, baseline_diversity=0.8,
                      hours_since_last_trigger=None)


def _decide(**changes):
    return retrain_needed(replace(QUIET, **changes), POLICY)


def test_quiet_feedback_does_not_retrain():
    decision = _decide()
    assert not decision.retrain and decision.reasons[0].startswith("no trigger")


@pytest.mark.parametrize(("rows", "retrain"), [(POLICY.min_new_feedback - 1, False),
                                               (POLICY.min_new_feedback, True)])
def test_volume_rule_on_both_sides(rows, retrain):
    assert _decide(new_usable=rows).retrain is retrain


@pytest.mark.parametrize(("negative", "retrain"), [(29, False), (30, True)])
def test_negative_feedback_drift_on_both_sides(negative, retrain):
    # Baseline 20 %, threshold +10 points.
    decision = _decide(recent_negative=negative)
    assert decision.retrain is retrain
    if retrain:
        assert decision.reasons[0].startswith("drift: negative feedback")


def test_drift_needs_enough_feedback_in_both_windows():
    few = POLICY.min_window_feedback - 1
    assert not _decide(recent_feedback=few, recent_negative=few).retrain
    assert not _decide(baseline_feedback=few, baseline_negative=0, recent_negative=90).retrain


@pytest.mark.parametrize(("diversity", "retrain"), [(0.61, False), (0.6, True)])
def test_diversity_drop_on_both_sides(diversity, retrain):
    assert _decide(recent_diversity=diversity).retrain is retrain  # -25 % of 0.8


def test_cooldown_blocks_any_trigger_and_expires():
    hot = {"new_usable": 10_000, "recent_negative": 90}
    assert not _decide(hours_since_last_trigger=POLICY.cooldown_hours - 0.1, **hot).retrain
    assert _decide(hours_since_last_trigger=POLICY.cooldown_hours, **hot).retrain


def test_no_new_rows_means_no_retrain_even_with_drift():
    decision = _decide(new_usable=0, recent_negative=90)
    assert not decision.retrain and "no new" in decision.reasons[0]
