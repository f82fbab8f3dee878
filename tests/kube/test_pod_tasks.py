"""Tier 1: the lifecycle's pod tasks through Airflow (the real KubernetesPodOperator, task
runner and trigger) against a real kube-apiserver with a simulated node."""

from __future__ import annotations

from tests.kube.conftest import outcome

CHECKED = "already_checked"


def _ok(proc) -> None:
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-4000:])


def test_deferrable_train_pod_runs_the_stage_and_its_result_is_the_task_xcom(scenarios):
    """The trigger watches the pod (the worker slot is free meanwhile); the task resumes with
    the stage's result.json as its XCom; the succeeded pod is deleted."""
    out = outcome(scenarios, "deferrable_pod")
    _ok(out.first)
    text = out.first.stdout + out.first.stderr
    assert "Pausing task as DEFERRED" in text and "Trigger completed" in text
    assert out.result["launcher"] == "single" and out.result["steps"] == 10
    assert out.recorded == out.result  # what the downstream task received
    # The stage's own log, streamed from the node through the API server's log proxy.
    assert "tasks.train.launch: trained" in text
    assert len(out.pods_started) == 1 and out.live_pods == []


def test_a_killed_worker_s_retry_reattaches_to_its_pod_even_without_its_log(scenarios):
    """The retry finds the pod still running and watches it to the end, by its status when
    the log stream breaks (upstream labels the pod checked, and the next retry would start a
    second one)."""
    out = outcome(scenarios, "killed_worker")
    _ok(out.retry)
    text = out.retry.stdout + out.retry.stderr
    assert "reattaching, not starting another" in text
    assert "waiting for it by its status" in text
    assert len(out.pods_started) == 1  # one pod, not two
    assert out.result["steps"] == 10


def test_after_the_api_failed_mid_task_the_retry_takes_the_pod_s_result(scenarios):
    """The attempt that lost its API server fails but leaves its pod running, unlabelled;
    the pod finishes unwatched; the retry takes its result instead of training again."""
    out = outcome(scenarios, "api_lost")
    assert out.first_failed
    [left] = out.live_pods
    assert CHECKED not in (left.metadata.labels or {})
    _ok(out.retry)
    assert "while no task watched it: its result is this task's" in out.retry.stdout
    assert out.pods_started == [left.metadata.name]  # one pod, not two
    assert out.result["steps"] == 10
