"""REST API v2 against a real `airflow standalone` on a free port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest
import requests

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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("rest")
    port = _free_port()
    env = airflow_env(home, api_port=port, AIGC_LIFECYCLE_SCHEDULE="none")
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
        yield base
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
    token = requests.post(f"{server}/auth/token",
                          json={"username": "admin", "password": PASSWORD}, timeout=30)
    token.raise_for_status()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    dag_url = f"{server}/api/v2/dags/aigc_lifecycle"
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
    resp = session.post(f"{dag_url}/dagRuns", json={"logical_date": None, "conf": TINY},
                        timeout=30)
    assert resp.status_code == 200, resp.text
    run_url = f"{dag_url}/dagRuns/{resp.json()['dag_run_id']}"

    def finished():
        state = session.get(run_url, timeout=60).json()["state"]
        return state if state in ("success", "failed") else None

    assert _wait(finished, 900, "the triggered run", interval=5) == "success"
    tis = session.get(f"{run_url}/taskInstances", timeout=60).json()["task_instances"]
    assert {t["task_id"]: t["state"] for t in tis} == {
        s: "success" for s in ("ingest", "validate", "preprocess", "train", "register",
                               "compress", "evaluate", "canary", "promote", "report")} | {
        "run_failed": "skipped"}
