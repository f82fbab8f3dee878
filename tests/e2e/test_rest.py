"""REST API v2 against a real Airflow (components started as `make up` starts them)."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from tasks.stage import safe_name
from tests.e2e.conftest import SCHEDULED, finished, wait_for

pytestmark = pytest.mark.rest


def test_every_started_service_listens_on_loopback_only(server):
    """`make up` and these tests start the same components; none may open a port to the
    network (Airflow's log servers would, under `airflow standalone`)."""
    import psutil

    listening: dict[str, set[tuple[str, int]]] = {}
    for pid_file in (server.state / "pids").glob("*"):
        leader = psutil.Process(int(pid_file.read_text()))
        for proc in [leader, *leader.children(recursive=True)]:
            listening.setdefault(pid_file.name, set()).update(
                (c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN)
    assert set(listening) == {"airflow-api-server", "airflow-scheduler", "airflow-dag-processor",
                              "airflow-triggerer", "mlflow-ui"}
    ports = {port for addresses in listening.values() for _, port in addresses}
    assert {int(server.base.rsplit(":", 1)[1]), int(server.mlflow.rsplit(":", 1)[1])} <= ports
    assert {ip for addresses in listening.values() for ip, _ in addresses} == {"127.0.0.1"}, \
        listening


def test_malformed_conf_is_rejected_naming_the_field(api):
    session, dag_url = api
    for conf, field in [({"max_steps": -1}, "max_steps"), ({"learning_rate": "fast"},
                                                             "learning_rate")]:
        resp = session.post(f"{dag_url}/dagRuns", json={"logical_date": None, "conf": conf},
                            timeout=30)
        assert 400 <= resp.status_code < 500, resp.text
        assert field in resp.text
    # Free text is bounded by the form's schema; a body past the API's limit is not read.
    resp = session.post(f"{dag_url}/dagRuns", timeout=30, json={
        "logical_date": None, "conf": {"dataset_uri": "d" * 3000}})
    assert 400 <= resp.status_code < 500 and "dataset_uri" in resp.text, resp.text[:500]
    resp = session.post(f"{dag_url}/dagRuns", timeout=30, json={
        "logical_date": None, "conf": {"dataset_uri": "d" * 1_000_000}})
    assert resp.status_code == 413 and len(resp.content) < 200, resp.text[:500]
    assert session.get(f"{dag_url}/dagRuns", timeout=60).json()["total_entries"] == 0


def test_trigger_with_conf_runs_to_success(server, api, triggered):
    session, _ = api
    assert triggered.state == "success"
    run_url = triggered.url
    tis = session.get(f"{run_url}/taskInstances", timeout=60).json()["task_instances"]
    assert {t["task_id"]: t["state"] for t in tis} == {
        s: "success" for s in ("base_model", "ingest", "validate", "preprocess", "train",
                               "register", "compress", "evaluate", "canary", "promote",
                               "report")} | {
        "run_failed": "skipped"}
    # The report task's extra link, as the UI shows it, opens the report in MLflow.
    links = session.get(f"{run_url}/taskInstances/report/links", timeout=60).json()
    assert "/artifacts/report/report.html?" in links["extra_links"]["Run report"], links
    # Each stage task links to its own MLflow run, which links back to this DAG run.
    train = session.get(f"{run_url}/taskInstances/train/links", timeout=60).json()
    mlflow_page = train["extra_links"]["MLflow run"]
    assert mlflow_page.startswith(f"{server.mlflow}/#/experiments/"), train
    import mlflow

    client = mlflow.MlflowClient(server.env["MLFLOW_TRACKING_URI"])
    stage_run = client.get_run(mlflow_page.split("?")[0].rsplit("/", 1)[1])
    assert stage_run.data.tags["aigc.stage"] == "train"
    assert stage_run.data.tags["aigc.airflow_url"].endswith(
        f"/dags/aigc_lifecycle/runs/{quote(triggered.run_id, safe='')}/tasks/train")


FEEDBACK_ROWS = 6


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
    wait_for(lambda: session.get(fb_url, timeout=60).ok, 180, "aigc_feedback to be parsed")
    session.patch(fb_url, json={"is_paused": False}, timeout=60).raise_for_status()
    conf = {"min_new_feedback": FEEDBACK_ROWS}

    def trigger_feedback() -> dict[str, str]:
        resp = session.post(f"{fb_url}/dagRuns", json={"logical_date": None, "conf": conf},
                            timeout=30)
        assert resp.status_code == 200, resp.text
        run_url = f"{fb_url}/dagRuns/{resp.json()['dag_run_id']}"
        assert wait_for(lambda: finished(session, run_url), 300, "aigc_feedback") == "success"
        tis = session.get(f"{run_url}/taskInstances", timeout=60).json()["task_instances"]
        return {t["task_id"]: t["state"] for t in tis}

    # Retention is off here (AIGC_RETENTION_DAYS unset): its task succeeds, deleting nothing.
    assert trigger_feedback() == {"analyze": "success", "retrain_needed": "success",
                                  "export": "success", "retention": "success"}
    runs = wait_for(lambda: _asset_runs(session, dag_url), 120, "the Asset-triggered run")
    assert len(runs) == 1
    run_url = f"{dag_url}/dagRuns/{runs[0]['dag_run_id']}"
    assert wait_for(lambda: finished(session, run_url), 900, "the retrain", interval=5) == \
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
                                  "export": "skipped", "retention": "success"}
    time.sleep(20)
    assert len(_asset_runs(session, dag_url)) == 1
