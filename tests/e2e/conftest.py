"""One Airflow stack (API server + UI, scheduler, DAG processor, triggerer, MLflow UI) and
one REST-triggered lifecycle run, shared by the REST and browser tests of this package."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tasks.services import start_uis, stop_all
from tests.conftest import TINY
from tests.e2e.airflow_env import airflow_env, migrate

PASSWORD = "rest-test-password"
# What runs that nobody configured (Asset-triggered ones) use here: tiny and quick.
SCHEDULED = TINY | {"launcher": "single", "compress_methods": []}
# The shared run: compression is exercised by the lifecycle e2e; here it would only cost time.
TRIGGERED = TINY | {"compress_methods": []}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 2.0):
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
class Stack:
    base: str  # the Airflow API server and UI
    mlflow: str  # the MLflow UI
    env: dict[str, str]

    @property
    def state(self) -> Path:
        return Path(self.env["AIGC_HOME"])


@pytest.fixture(scope="package")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("stack")
    port, mlflow_port = free_port(), free_port()
    env = airflow_env(home, api_port=port, AIGC_LIFECYCLE_SCHEDULE="none",
                      AIGC_FEEDBACK_SCHEDULE="none",
                      AIGC_LIFECYCLE_DEFAULTS=json.dumps(SCHEDULED),
                      AIGC_MLFLOW_UI_URL=f"http://127.0.0.1:{mlflow_port}")
    migrate(env)
    with open(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"], "w") as fh:
        json.dump({"admin": PASSWORD}, fh)
    stack = Stack(f"http://127.0.0.1:{port}", env["AIGC_MLFLOW_UI_URL"], env)
    try:
        start_uis(stack.state, env, port, mlflow_port)
        yield stack
    finally:
        stop_all(stack.state)


@pytest.fixture(scope="package")
def api(server):
    token = requests.post(f"{server.base}/auth/token",
                          json={"username": "admin", "password": PASSWORD}, timeout=30)
    token.raise_for_status()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    dag_url = f"{server.base}/api/v2/dags/aigc_lifecycle"
    wait_for(lambda: session.get(dag_url, timeout=60).ok, 180, "the DAG to be parsed")
    session.patch(dag_url, json={"is_paused": False}, timeout=60).raise_for_status()
    return session, dag_url


def finished(session: requests.Session, run_url: str) -> str | None:
    state = session.get(run_url, timeout=60).json()["state"]
    return state if state in ("success", "failed") else None


@dataclass(frozen=True)
class TriggeredRun:
    run_id: str
    url: str  # its REST resource
    state: str


@pytest.fixture(scope="package")
def triggered(api) -> TriggeredRun:
    """The lifecycle triggered over REST with a conf, run to its end."""
    session, dag_url = api
    resp = session.post(f"{dag_url}/dagRuns", timeout=30,
                        json={"logical_date": None, "conf": TRIGGERED})
    assert resp.status_code == 200, resp.text
    run_id = resp.json()["dag_run_id"]
    url = f"{dag_url}/dagRuns/{run_id}"
    state = wait_for(lambda: finished(session, url), 900, "the triggered run", interval=5)
    return TriggeredRun(run_id, url, state)
