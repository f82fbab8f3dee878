"""Canary policies on simulated rollouts: how often each rolls back a challenger identical to
the champion (a false rollback), and how often and how fast it rolls back a worse one. Pure
policy, no server. Writes bench/results/canary_sim.json and its section of
docs/BENCHMARKS.md.

Policies:
- anytime: the canary's policy (tasks.rollout.policy, default settings): error and
  negative-feedback e-processes, latency by the P99 ratio and a rank test with spent alpha;
- per-look Fisher: the policy it replaced, a one-sided Fisher exact test at alpha on each
  step's data at every analysis (error rise > 2 points and significant; negative feedback
  significant), and the P99 ratio alone;
- fixed threshold: a Flagger-style analysis: an interval fails when the challenger's success
  rate is under 99 % or its P99 is over 1.5x the champion's; a passed interval advances a
  step, 5 failed intervals roll back.

Traffic per analysis: `balanced` sends 50 requests to each version; `by weight` sends 1,000
split by the step's weight (50 challenger requests at 5 %, 950 champion). Every request
errs with its version's error rate, takes a log-normal latency (median 100 ms, sigma 0.5;
times 1.5 for the slow challenger) and gets feedback with probability 0.3, negative with
probability 0.2 for both versions. Steps 5/25/50/100 %; at 100 % the champion's last step
stands in for it (as the controller does).

    .venv/bin/python bench/canary_sim.py [--rollouts 10000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tasks.rollout.policy import (
    Action,
    CanaryPolicy,
    CanaryState,
    Observation,
    next_canary_step,
)
from tasks.rollout.stats import _log_comb
from tasks.settings import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
from report import update_section  # noqa: E402

POLICY = CanaryPolicy()
BASE_ERRORS, LATENCY_MS, SIGMA = 0.01, 100.0, 0.5
FEEDBACK, NEGATIVE = 0.3, 0.2
MAX_ANALYSES = 50
SCENARIOS = {  # name: (challenger error rate, challenger latency factor)
    "A/A (identical)": (BASE_ERRORS, 1.0),
    "errors +2 points": (BASE_ERRORS + 0.02, 1.0),
    "errors +5 points": (BASE_ERRORS + 0.05, 1.0),
    "errors +10 points": (BASE_ERRORS + 0.10, 1.0),
    "latency 1.5x": (BASE_ERRORS, 1.5),
}
TRAFFIC = ("balanced", "by weight")
POLICIES = ("anytime", "per-look Fisher", "fixed threshold")


@dataclass(frozen=True)
class Interval:
    """One version's requests in one analysis interval."""

    requests: int
    errors: int
    feedback_total: int
    feedback_negative: int
    latencies: np.ndarray


def _interval(rng: np.random.Generator, n: int, error_rate: float, slow: float) -> Interval:
    feedback = int(rng.binomial(n, FEEDBACK))
    return Interval(n, int(rng.binomial(n, error_rate)), feedback,
                    int(rng.binomial(feedback, NEGATIVE)),
                    LATENCY_MS * slow * rng.lognormal(0.0, SIGMA, n))


def _sizes(traffic: str, weight: int) -> tuple[int, int]:
    """(champion, challenger) requests in one interval."""
    if traffic == "balanced":
        return (0 if weight == 100 else 50), 50
    challenger = round(1000 * weight / 100)
    return 1000 - challenger, challenger


def _merge(a: Interval | None, b: Interval) -> Interval:
    if a is None:
        return b
    return Interval(a.requests + b.requests, a.errors + b.errors,
                    a.feedback_total + b.feedback_total,
                    a.feedback_negative + b.feedback_negative,
                    np.concatenate([a.latencies, b.latencies]))


def _observation(i: Interval) -> Observation:
    p99 = float(np.percentile(i.latencies, 99)) if i.requests else 0.0
    return Observation(i.requests, i.errors, p99, i.feedback_total - i.feedback_negative,
                       i.feedback_total, tuple((float(v), 1) for v in i.latencies))


def _fisher_p(bad_a: int, n_a: int, bad_b: int, n_b: int) -> float:
    """One-sided Fisher exact p-value that A's bad rate is above B's (the old policy's)."""
    if not n_a or not n_b:
        return 1.0
    total, bad = n_a + n_b, bad_a + bad_b
    base = _log_comb(total, n_a)
    return min(1.0, sum(math.exp(_log_comb(bad, k) + _log_comb(total - bad, n_a - k) - base)
                        for k in range(bad_a, min(bad, n_a) + 1)))


def _fisher_fails(champ: Observation, chall: Observation) -> bool:
    p = POLICY
    if min(chall.requests, champ.requests) > 0 and (
            chall.error_rate - champ.error_rate > p.max_error_rate_increase
            and _fisher_p(chall.errors, chall.requests, champ.errors, champ.requests)
            < p.alpha):
        return True
    if min(chall.requests, champ.requests) >= p.min_latency_samples and (
            chall.p99_ms > p.max_p99_ratio * champ.p99_ms):
        return True
    return min(chall.feedback_total, champ.feedback_total) >= p.min_feedback and _fisher_p(
        chall.negative_feedback, chall.feedback_total, champ.negative_feedback,
        champ.feedback_total) < p.alpha


# A policy: (its state, champion and challenger since the step began, this interval's
# champion and challenger) -> (action, state).
Decide = Callable[[Any, Observation, Observation, Interval, Interval], tuple[Action, Any]]


def anytime(state: CanaryState, champ: Observation, chall: Observation, *_: Interval,
            ) -> tuple[Action, CanaryState]:
    decision = next_canary_step(state, champ, chall, POLICY)
    return decision.action, decision.state


def per_look_fisher(state: CanaryState, champ: Observation, chall: Observation,
                    *_: Interval) -> tuple[Action, CanaryState]:
    if _fisher_fails(champ, chall):
        return Action.ROLLBACK, state
    if state.step + 1 == len(POLICY.steps):
        return Action.PROMOTE, state
    return Action.ADVANCE, replace(state, step=state.step + 1)


def fixed_threshold(state: tuple[int, int], champ: Observation, chall: Observation,
                    champ_now: Interval, chall_now: Interval) -> tuple[Action, tuple[int, int]]:
    step, failed = state
    success = 1 - chall_now.errors / chall_now.requests
    p99 = float(np.percentile(chall_now.latencies, 99))
    if success < 0.99 or p99 > POLICY.max_p99_ratio * champ.p99_ms:
        failed += 1
        return (Action.ROLLBACK if failed >= 5 else Action.HOLD), (step, failed)
    if step + 1 == len(POLICY.steps):
        return Action.PROMOTE, (step, failed)
    return Action.ADVANCE, (step + 1, failed)


DECIDE: dict[str, tuple[Decide, Callable[[], Any]]] = {
    "anytime": (anytime, CanaryState),
    "per-look Fisher": (per_look_fisher, CanaryState),
    "fixed threshold": (fixed_threshold, lambda: (0, 0)),
}


def rollout(decide: Decide, state: Any, rng: np.random.Generator, traffic: str,
            error_rate: float, slow: float) -> tuple[Action, int]:
    """Walk one rollout to its end: (final action, analyses it took)."""
    step, champ_step, chall_step, baseline = 0, None, None, None
    for analysis in range(1, MAX_ANALYSES + 1):
        weight = POLICY.steps[step]
        n_champ, n_chall = _sizes(traffic, weight)
        champ_now = _interval(rng, n_champ, BASE_ERRORS, 1.0)
        chall_now = _interval(rng, n_chall, error_rate, slow)
        champ_step, chall_step = _merge(champ_step, champ_now), _merge(chall_step, chall_now)
        champ = baseline if weight == 100 else _observation(champ_step)
        if weight < 100:
            baseline = champ
        action, state = decide(state, champ, _observation(chall_step), champ_now, chall_now)
        if action in (Action.ROLLBACK, Action.PROMOTE):
            return action, analysis
        if action is Action.ADVANCE:
            step, champ_step, chall_step = step + 1, None, None
    return Action.HOLD, MAX_ANALYSES


def _batch(args: tuple[str, str, str, int, int]) -> list[tuple[str, int]]:
    policy, traffic, scenario, rollouts, seed = args
    decide, start = DECIDE[policy]
    error_rate, slow = SCENARIOS[scenario]
    rng = np.random.default_rng(seed)
    return [(a.value, n) for a, n in (rollout(decide, start(), rng, traffic, error_rate, slow)
                                      for _ in range(rollouts))]


def simulate(rollouts: int, workers: int) -> list[dict[str, Any]]:
    cells = [(p, t, s) for t in TRAFFIC for s in SCENARIOS for p in POLICIES]
    chunks = max(1, workers * 2)
    jobs = [(p, t, s, rollouts // chunks + (i < rollouts % chunks), 1000 * k + i)
            for k, (p, t, s) in enumerate(cells) for i in range(chunks)]
    with ProcessPoolExecutor(workers) as pool:
        results = list(pool.map(_batch, jobs))
    rows = []
    for k, (p, t, s) in enumerate(cells):
        outcomes = [o for r in results[k * chunks:(k + 1) * chunks] for o in r]
        rolled = [n for action, n in outcomes if action == Action.ROLLBACK.value]
        rows.append({"policy": p, "traffic": t, "scenario": s, "rollouts": len(outcomes),
                     "rollback_rate": len(rolled) / len(outcomes),
                     "within_2": sum(n <= 2 for n in rolled) / len(outcomes),
                     "median_analyses": statistics.median(rolled) if rolled else None})
    return rows


def table(rows: list[dict[str, Any]], traffic: str) -> str:
    lines = ["| challenger | policy | rolled back | within 2 analyses | analyses to rollback "
             "(median) |", "| --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        if r["traffic"] != traffic:
            continue
        median = "-" if r["median_analyses"] is None else f"{r['median_analyses']:g}"
        lines.append(f"| {r['scenario']} | {r['policy']} | {r['rollback_rate']:.2%} | "
                     f"{r['within_2']:.2%} | {median} |")
    return "\n".join(lines)


def fixed_sample_power(n: int, bad_rate: float, alpha: float) -> float:
    """Exact probability that one Fisher test at level alpha, run once on n requests per
    version (never before), finds a challenger at `bad_rate` worse than the champion at
    BASE_ERRORS: what any test holding alpha can hope for from that much data."""
    pmf = lambda k, p: math.comb(n, k) * p ** k * (1 - p) ** (n - k)  # noqa: E731
    champ = [pmf(k, BASE_ERRORS) for k in range(n + 1)]
    chall = [pmf(k, bad_rate) for k in range(n + 1)]
    return sum(pc * ph for c, pc in enumerate(chall) for h, ph in enumerate(champ)
               if pc * ph > 1e-12 and _fisher_p(c, n, h, n) < alpha)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for traffic in TRAFFIC:
        cell = {(r["policy"], r["scenario"]): r for r in rows if r["traffic"] == traffic}
        false = cell[("anytime", "A/A (identical)")]["rollback_rate"]
        out.append(f"{traffic}: false rollbacks {false:.2%} (target <= alpha = "
                   f"{POLICY.alpha:.0%}) -> {'met' if false <= POLICY.alpha else 'NOT met'}")
        six = cell[("anytime", "errors +5 points")]
        median = six["median_analyses"]
        met = median is not None and median <= 2 and six["rollback_rate"] >= 0.5
        out.append(f"{traffic}: a challenger at 6 % errors against 1 % rolled back in "
                   f"{six['rollback_rate']:.0%} of rollouts, {six['within_2']:.0%} within 2 "
                   f"analyses (median {median}; target: <= 2) -> {'met' if met else 'NOT met'}")
    bound = fixed_sample_power(100, SCENARIOS["errors +5 points"][0], POLICY.alpha)
    out.append(f"balanced: the most two analyses can give: one Fisher test at alpha "
               f"{POLICY.alpha:.0%} on their 100 requests per version, never run before, "
               f"detects 6 % against 1 % with probability {bound:.0%}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    rows = simulate(args.rollouts, args.workers)
    results = PROJECT_ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "canary_sim.json").write_text(json.dumps(
        {"rollouts": args.rollouts, "policy": {"steps": POLICY.steps, "alpha": POLICY.alpha,
                                               "min_requests": POLICY.min_requests},
         "rows": rows}, indent=2))
    body = "\n\n".join(f"**{t}** ({args.rollouts:,} rollouts per row)\n\n{table(rows, t)}"
                       for t in TRAFFIC)
    lines = "\n".join(f"- {v}" for v in verdicts(rows))
    print(body + "\n\n" + lines)
    update_section("canary-sim", "## Canary policies, simulated (`bench/canary_sim.py`)\n\n"
                   f"`.venv/bin/python bench/canary_sim.py --rollouts {args.rollouts}`\n\n"
                   f"{body}\n\n{lines}")


if __name__ == "__main__":
    main()
