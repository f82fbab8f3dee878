"""The retrain decision: pure, typed, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.config import FeedbackConfig

# Rates are ratios of counts: 30/100 - 20/100 must count as the +10 points it is.
EPS = 1e-9


@dataclass(frozen=True)
class FeedbackStats:
    """What the store says about the champion, in a recent and a baseline window."""

    champion: str | None
    new_usable: int  # well-rated feedback no export holds yet (any version)
    recent_feedback: int
    recent_negative: int
    baseline_feedback: int
    baseline_negative: int
    recent_responses: int
    recent_diversity: float  # distinct-2 over the champion's responses
    baseline_responses: int
    baseline_diversity: float
    hours_since_last_trigger: float | None  # None: never triggered

    @property
    def recent_negative_rate(self) -> float:
        return self.recent_negative / self.recent_feedback if self.recent_feedback else 0.0

    @property
    def baseline_negative_rate(self) -> float:
        return self.baseline_negative / self.baseline_feedback if self.baseline_feedback else 0.0


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    reasons: tuple[str, ...]


def retrain_needed(stats: FeedbackStats, policy: FeedbackConfig) -> RetrainDecision:
    """Retrain when enough new usable feedback piled up, or the champion drifted (more
    negative feedback, less diverse answers) — but never inside the cooldown, and never
    with nothing new to train on."""
    if (stats.hours_since_last_trigger is not None
            and stats.hours_since_last_trigger < policy.cooldown_hours):
        return RetrainDecision(False, (
            f"cooldown: last trigger {stats.hours_since_last_trigger:.1f} h ago "
            f"(< {policy.cooldown_hours:g} h)",))
    if stats.new_usable == 0:
        return RetrainDecision(False, ("no new well-rated feedback to train on",))
    triggers = []
    if stats.new_usable >= policy.min_new_feedback:
        triggers.append(f"volume: {stats.new_usable} new rows (>= {policy.min_new_feedback})")
    if min(stats.recent_feedback, stats.baseline_feedback) >= policy.min_window_feedback:
        rise = stats.recent_negative_rate - stats.baseline_negative_rate
        if rise >= policy.max_negative_rate_increase - EPS:
            triggers.append(f"drift: negative feedback {stats.recent_negative_rate:.1%} vs "
                            f"baseline {stats.baseline_negative_rate:.1%} (+{rise:.1%} >= "
                            f"+{policy.max_negative_rate_increase:.1%})")
    if (min(stats.recent_responses, stats.baseline_responses) >= policy.min_window_responses
            and stats.baseline_diversity > 0):
        drop = 1 - stats.recent_diversity / stats.baseline_diversity
        if drop >= policy.max_diversity_drop - EPS:
            triggers.append(f"drift: distinct-2 {stats.recent_diversity:.3f} vs baseline "
                            f"{stats.baseline_diversity:.3f} (-{drop:.0%} >= "
                            f"-{policy.max_diversity_drop:.0%})")
    if triggers:
        return RetrainDecision(True, tuple(triggers))
    return RetrainDecision(False, (f"no trigger: {stats.new_usable} new rows (< "
                                   f"{policy.min_new_feedback}), no drift beyond thresholds",))
