"""The canary controller: apply each step's weight, observe an interval, let the pure
policy decide, and record every step. Targets: the local server or a KServe service."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tasks.rollout.observe import MetricsSource, Snapshot, observation
from tasks.rollout.policy import (
    Action,
    CanaryPolicy,
    CanaryState,
    Observation,
    next_canary_step,
)

log = logging.getLogger(__name__)
STAT_TEST = ("anytime-valid over the whole rollout (false rollback <= alpha, split over three "
             "rules): error and negative-feedback rates by a mixture SPRT of conditional 2x2 "
             "likelihood ratios (odds ratios 2-16); latency by the P99 ratio and a one-sided "
             "Mann-Whitney test on per-request latencies (histogram buckets as ties when read "
             "from Prometheus), its level spent over the analyses")


class Target(Protocol):
    def set_weight(self, version: str, weight: int) -> None: ...


class ServerTarget:
    """The model server's admin API (the embedded default)."""

    def __init__(self, url: str, admin_key: str) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {admin_key}"}

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        import requests

        reply = requests.request(method, f"{self.url}{path}", headers=self.headers, timeout=60,
                                 **kwargs)
        if not reply.ok:
            raise RuntimeError(f"{method} {path}: {reply.status_code} {reply.text}")
        return reply.json()

    def set_weight(self, version: str, weight: int) -> None:
        self._call("PUT", "/admin/canary", json={"version": version, "weight": weight})

    def reload(self) -> dict[str, Any]:
        """Make the server follow the aliases now (rather than at its next poll)."""
        return self._call("POST", "/admin/reload")


@dataclass(frozen=True)
class StepRecord:
    step: int
    weight: int  # the weight observed
    action: str
    next_weight: int
    reasons: tuple[str, ...]
    champion: dict[str, Any]
    challenger: dict[str, Any]
    at: float


@dataclass
class CanaryOutcome:
    action: Action
    champion: str
    challenger: str
    policy: CanaryPolicy
    steps: list[StepRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.action.value, "champion": self.champion,
                "challenger": self.challenger, "test": STAT_TEST,
                "policy": dataclasses.asdict(self.policy),
                "steps": [dataclasses.asdict(s) for s in self.steps]}


def _summary(obs: Observation) -> dict[str, Any]:
    """What a step record keeps of an observation: its counts, not its latency sample."""
    return {f.name: getattr(obs, f.name) for f in dataclasses.fields(obs)
            if f.name != "latencies"} | {"latency_samples": obs.latency_samples}


def run_canary(*, target: Target, source: MetricsSource, champion: str, challenger: str,
               policy: CanaryPolicy, interval_s: float,
               on_step: Callable[[StepRecord], None] = lambda r: None,
               sleep: Callable[[float], None] = time.sleep) -> CanaryOutcome:
    """Walk the steps until promote or rollback. Each step's observation counts from the
    moment its weight was set; a hold keeps counting. Any failure on the way (the server
    gone, a bad metric) sets the challenger's weight back to 0 before it propagates."""
    outcome = CanaryOutcome(Action.HOLD, champion, challenger, policy)
    state = CanaryState()
    weight = policy.steps[0]
    baseline = None  # the champion's last well-sampled interval
    try:
        target.set_weight(challenger, weight)
        start: dict[str, Snapshot] = source.snapshot()
        while True:
            sleep(interval_s)
            now = source.snapshot()
            champ = observation(start.get(champion), now.get(champion))
            chall = observation(start.get(challenger), now.get(challenger))
            if weight == 100 and baseline is not None:
                champ = baseline  # it serves nothing at 100 %: judge against its last step
            elif champ.requests >= policy.min_requests:
                baseline = champ
            decision = next_canary_step(state, champ, chall, policy)
            record = StepRecord(state.step, weight, decision.action.value, decision.weight,
                                decision.reasons, _summary(champ), _summary(chall),
                                time.time())
            outcome.steps.append(record)
            log.info("canary %s at %d%%: %s", decision.action.value, weight,
                     "; ".join(decision.reasons))
            on_step(record)
            state = decision.state
            if decision.action in (Action.ROLLBACK, Action.PROMOTE):
                outcome.action = decision.action
                if decision.action is Action.ROLLBACK:
                    target.set_weight(challenger, 0)
                return outcome
            if decision.action is Action.ADVANCE:
                weight = decision.weight
                target.set_weight(challenger, weight)
                start = source.snapshot()
    except BaseException:
        log.exception("canary aborted: challenger %s back to 0%%", challenger)
        try:
            target.set_weight(challenger, 0)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            log.exception("could not reset the challenger's weight")
        raise
