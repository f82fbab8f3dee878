"""What users and clusters do to a pod task, played against the tier-1 cluster: each scenario
drives Airflow runs in its own home and namespace and returns what happened, for the tests to
judge. They run side by side (tests/kube/conftest.py `scenarios`).

A retry is `airflow tasks test` of the same task in the same DAG run: what Airflow runs when
a task instance is retried, without a scheduler's retry delay.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.kube.cluster import pods, wait_for


@dataclass
class Outcome:
    """What a scenario saw: its runs' processes, its run, its pods, its result."""

    namespace: str = ""
    first: Any = None
    retry: Any = None
    run_id: str = ""
    pods_started: list[str] = field(default_factory=list)
    live_pods: list[Any] = field(default_factory=list)
    result: dict | None = None
    recorded: dict | None = None
    first_failed: bool = False
    stage_dir: Path | None = None


def _finish(out: Outcome, cluster, scenario, namespace: str) -> Outcome:
    out.namespace = namespace
    out.stage_dir = scenario.stage_dir(out.run_id)
    result = out.stage_dir / "result.json"
    out.result = json.loads(result.read_text()) if result.exists() else None
    out.pods_started = cluster.node.pods_started(namespace)
    out.live_pods = [p for p in pods(cluster.core, namespace)
                     if p.metadata.deletion_timestamp is None]
    return out


def run_then_retry(cluster, scenario, namespace: str, conf: dict) -> Outcome:
    """A run to the end, then a retry of its finished train task (a job outlives it)."""
    out = Outcome(first=scenario.dags_test(conf))
    out.recorded = scenario.recorded()
    out.run_id = scenario.last_run_id()
    out.retry = scenario.tasks_test("train", out.run_id)
    return _finish(out, cluster, scenario, namespace)


def run_only(cluster, scenario, namespace: str, conf: dict) -> Outcome:
    out = Outcome(first=scenario.dags_test(conf))
    out.recorded = scenario.recorded()
    out.run_id = scenario.last_run_id()
    return _finish(out, cluster, scenario, namespace)


def _watched_running_pod(cluster, scenario, namespace: str) -> tuple[Any, Any]:
    """Start a run whose train pod runs, its stage held back, with the operator watching."""
    cluster.node.hold.add(namespace)
    proc = scenario.dags_test({}, background=True)
    wait_for(lambda: any(p.status.phase == "Running" for p in pods(cluster.core, namespace)),
             timeout=240, what=f"the train pod running in {namespace}")
    wait_for(lambda: "Pod has reached Running phase" in scenario.last_log(), timeout=60,
             what="the operator watching its pod")
    return proc, scenario.last_run_id()


def _retry_reattached(cluster, scenario, namespace: str, run_id: str) -> Any:
    """Retry while the pod still runs its (held) stage; let it finish once reattached."""
    proc = scenario.tasks_test("train", run_id, background=True)
    try:
        wait_for(lambda: "reattaching, not starting another" in scenario.last_log()
                 or proc.poll() is not None, timeout=240, what="the retry reattaching")
    finally:
        cluster.node.hold.discard(namespace)
    proc.wait(timeout=600)
    return scenario.completed(proc)


def killed_worker(cluster, scenario, namespace: str) -> Outcome:
    """The worker dies mid-task (its pod goes on); the retry runs while the node's log
    endpoint is broken."""
    proc, run_id = _watched_running_pod(cluster, scenario, namespace)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    cluster.node.break_logs.add(namespace)
    try:
        out = Outcome(run_id=run_id,
                      retry=_retry_reattached(cluster, scenario, namespace, run_id))
    finally:
        cluster.node.break_logs.discard(namespace)
    return _finish(out, cluster, scenario, namespace)


def api_lost(cluster, scenario, namespace: str) -> Outcome:
    """The API server becomes unreachable for the task (not for the node) mid-task; the task
    fails; its pod finishes while no task watches it; the API comes back and the task is
    retried."""
    proc, run_id = _watched_running_pod(cluster, scenario, namespace)
    cluster.switch.cut()
    try:
        failed = proc.wait(timeout=400) != 0
    finally:
        cluster.switch.restore()
    left = [p for p in pods(cluster.core, namespace) if p.metadata.deletion_timestamp is None]
    cluster.node.hold.discard(namespace)
    wait_for(lambda: all(p.status.phase == "Succeeded" for p in pods(cluster.core, namespace)),
             timeout=240, what="the unwatched pod finishing")
    out = Outcome(run_id=run_id, first_failed=failed,
                  retry=scenario.tasks_test("train", run_id))
    finished = _finish(out, cluster, scenario, namespace)
    finished.live_pods = left  # what the failed attempt left behind
    return finished
