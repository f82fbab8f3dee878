"""REST API v2 against a real `airflow standalone` on a free port."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tasks.stage import safe_name
from tests.conftest import TINY
from tests.e2e.airflow_env import BIN, airflow_env

pytestmark = pytest.mark.rest
PASSWORD = "rest-test-password"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, interval: float = 2.0):
    """Poll until predicate is truthy; a slow answer (a loaded CI machine) counts as 'not yet'."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (requests.ConnectionError, requests.Timeout):
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f}s")


@dataclass(frozen=True)
class Standalone:
    base: str
    env: dict[str, str]


# What runs that nobody configured (Asset-triggered ones) use here: tiny and quick.
SCHEDULED = TINY | {"launcher": "single", "compress_methods": []}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("rest")
    port = _free_port()
    env = airflow_env(home, api_port=port, AIGC_LIFECYCLE_SCHEDULE="none",
                      AIGC_FEEDBACK_SCHEDULE="none",
                      AIGC_LIFECYCLE_DEFAULTS=json.dumps(SCHEDULED))
    airflow_home = env["AIRFLOW_HOME"]
    os.makedirs(airflow_home, exist_ok=True)
    with open(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"], "w") as fh:
        json.dump({"admin": PASSWORD}, fh)
    log = open(home / "standalone.log", "w")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen([str(BIN / "airflow"), "standalone"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            tail = (home / "standalone.log").read_text()[-3000:]
            raise RuntimeError(f"standalone exited: {tail}")
        return requests.get(f"{base}/api/v2/monitor/health", timeout=30).ok

    try:
        _wait(healthy, 240, "the API server")
        yield Standalone(base, env)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def api(server):
    token = requests.post(f"{server.base}/auth/token",
                          json={"username": "admin", "password": PASSWORD}, timeout=30)
    token.raise_for_status()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    dag_url = f"{server.base}/api/v2/dags/aigc_lifecycle"
    _wait(lambda: session.get(dag_url, timeout=60).ok, 180, "the DAG to be parsed")
    session.patch(dag_url, json={"is_paused": False}, timeout=60).raise_for_status()
    return session, dag_url


def test_malformed_conf_is_rejected_naming_the_field(api):
    session, dag_url = api
    for conf, field in [({"max_steps": -1}, "max_steps"), ({"learning_rate": "fast"},
                                                             "learning_rate")]:
        resp = session.post(f"{dag_url}/dagRuns", json={"logical_date": None, "conf": conf},
                            timeout=30)
        assert 400 <= resp.status_code < 500, resp.text
        assert field in resp.text
    assert session.get(f"{dag_url}/dagRuns", timeout=60).json()["total_entries"] == 0


def test_trigger_with_conf_runs_to_success(api):
    session, dag_url = api
    # Compression is exercised by the lifecycle e2e; here it would only cost time.
    resp = session.post(f"{dag_url}/dagRuns", timeout=30, json={
        "logical_date": None, "conf": TINY | {"compress_methods": []}})
    assert resp.status_code == 200, resp.text
    run_url = f"{dag_url}/dagRuns/{resp.json()['dag_run_id']}"

    def finished():
        state = session.get(run_url, timeout=60).json()["state"]
        return state if state in ("success", "failed") else None

    assert _wait(finished, 900, "the triggered run", interval=5) == "success"
    tis = session.get(f"{run_url}/taskInstances", timeout=60).json()["task_instances"]
    assert {t["task_id"]: t["state"] for t in tis} == {
        s: "success" for s in ("base_model", "ingest", "validate", "preprocess", "train",
                               "register", "compress", "evaluate", "canary", "promote",
                               "report")} | {
        "run_failed": "skipped"}
    # The report task's extra link, as the UI shows it, opens the report in MLflow.
    links = session.get(f"{run_url}/taskInstances/report/links", timeout=60).json()
    assert links["extra_links"]["Run report"].endswith("/artifacts/report/report.html"), links


FEEDBACK_ROWS = 6


def _finished(session, run_url: str):
    state = session.get(run_url, timeout=60).json()["state"]
    return state if state in ("success", "failed") else None


def _asset_runs(session, dag_url: str) -> list[dict]:
    runs = session.get(f"{dag_url}/dagRuns", timeout=60).json()["dag_runs"]
    return [r for r in runs if r["run_type"] == "asset_triggered"]


def _serve_and_rate(env: dict[str, str]) -> list[str]:
    """Serve the champion the run above promoted; rate FEEDBACK_ROWS answers up, two down."""
    from serving.local import local_server

    keys = {"AIGC_API_KEYS": secrets.token_hex(8), "AIGC_ADMIN_KEY": secrets.token_hex(8)}
    headers = {"Authorization": f"Bearer {keys['AIGC_API_KEYS']}"}
    liked = []
    log = Path(env["AIGC_HOME"]) / "serving.log"
    with local_server(env | keys | {"AIGC_MODEL_NAME": "aigc-gpt2"}, log) as srv:
        for i in range(FEEDBACK_ROWS + 2):
            answer = requests.post(f"{srv.url}/v1/generate", headers=headers, timeout=60,
                                   json={"prompt": f"what is {i} plus {i}?", "seed": i}).json()
            thumbs = "up" if i < FEEDBACK_ROWS else "down"
            requests.post(f"{srv.url}/v1/feedback", headers=headers, timeout=60, json={
                "request_id": answer["request_id"], "thumbs": thumbs}).raise_for_status()
            if thumbs == "up":
                liked.append(f"what is {i} plus {i}?")
    return liked


def test_feedback_triggers_one_retrain_on_exactly_the_new_rows(server, api):
    """Acceptance: feedback past the threshold -> aigc_feedback exports it -> the Asset event
    starts aigc_lifecycle, whose ingest holds exactly those rows; a second trigger inside
    the cooldown starts nothing."""
    session, dag_url = api
    liked = _serve_and_rate(server.env)
    fb_url = f"{server.base}/api/v2/dags/aigc_feedback"
    _wait(lambda: session.get(fb_url, timeout=60).ok, 180, "aigc_feedback to be parsed")
    session.patch(fb_url, json={"is_paused": False}, timeout=60).raise_for_status()
    conf = {"min_new_feedback": FEEDBACK_ROWS}

    def trigger_feedback() -> dict[str, str]:
        resp = session.post(f"{fb_url}/dagRuns", json={"logical_date": None, "conf": conf},
                            timeout=30)
        assert resp.status_code == 200, resp.text
        run_url = f"{fb_url}/dagRuns/{resp.json()['dag_run_id']}"
        assert _wait(lambda: _finished(session, run_url), 300, "aigc_feedback") == "success"
        tis = session.get(f"{run_url}/taskInstances", timeout=60).json()["task_instances"]
        return {t["task_id"]: t["state"] for t in tis}

    assert trigger_feedback() == {"analyze": "success", "retrain_needed": "success",
                                  "export": "success"}
    runs = _wait(lambda: _asset_runs(session, dag_url), 120, "the Asset-triggered run")
    assert len(runs) == 1
    run_url = f"{dag_url}/dagRuns/{runs[0]['dag_run_id']}"
    assert _wait(lambda: _finished(session, run_url), 900, "the retrain", interval=5) == \
        "success"
    run_dir = (Path(server.env["AIGC_HOME"]) / "artifacts" / "aigc_lifecycle"
               / safe_name(runs[0]["dag_run_id"]))
    ingest = json.loads((run_dir / "ingest" / "result.json").read_text())
    import pandas as pd

    [snapshot] = (Path(server.env["AIGC_HOME"]) / "artifacts" / "aigc_feedback").glob(
        "*/feedback.parquet")
    exported = pd.read_parquet(snapshot)
    assert sorted(exported["prompt"]) == sorted(liked)  # the liked answers, none disliked
    fb = ingest["feedback"]
    # Every exported row is trained on, unless the gate would refuse it (then counted).
    assert fb["rows"] >= 1 and fb["rows"] + sum(fb["dropped"].values()) == FEEDBACK_ROWS
    dataset = pd.read_parquet(ingest["dataset_uri"])
    assert len(dataset) == ingest["rows"] == SCHEDULED["max_rows"] + fb["rows"]
    assert set(dataset.tail(fb["rows"])["prompt"]) <= set(liked)

    # Inside the cooldown: analysed, not exported, no second run.
    assert trigger_feedback() == {"analyze": "success", "retrain_needed": "success",
                                  "export": "skipped"}
    time.sleep(20)
    assert len(_asset_runs(session, dag_url)) == 1
