"""Failure callbacks: a structured alert posted to the webhook Connection, or logged."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

from aigc_airflow.alerts import alert_payload, on_failure, on_run_failure

CONTEXT = {
    "dag_run": SimpleNamespace(dag_id="aigc_lifecycle", run_id="manual__1"),
    "task_instance": SimpleNamespace(task_id="train", try_number=3, max_tries=2,
                                     log_url="http://airflow/log", dag_id="aigc_lifecycle",
                                     run_id="manual__1"),
    "exception": RuntimeError("worker 1 died"),
}


def test_payload_names_the_dag_run_task_try_and_error():
    payload = alert_payload(CONTEXT)
    assert payload["summary"] == "aigc_lifecycle.train failed"
    assert (payload["dag_id"], payload["run_id"], payload["task_id"], payload["try_number"]) == (
        "aigc_lifecycle", "manual__1", "train", 3)
    assert payload["error"] == "worker 1 died" and payload["log_url"] == "http://airflow/log"


def _webhook(monkeypatch) -> tuple[list[tuple[dict, str]], HTTPServer]:
    received: list[tuple[dict, str]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server API
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((json.loads(body), self.headers.get("Authorization", "")))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AIRFLOW_CONN_AIGC_ALERTS", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": server.server_port,
        "schema": "http", "password": "s3cret", "extra": {"endpoint": "/hooks/aigc"}}))
    return received, server


def test_alert_is_posted_to_the_connection_webhook(monkeypatch):
    received, server = _webhook(monkeypatch)
    try:
        on_failure(CONTEXT)
    finally:
        server.shutdown()
    assert len(received) == 1
    payload, auth = received[0]
    assert payload["task_id"] == "train" and payload["severity"] == "critical"
    assert auth == "Bearer s3cret"


def test_without_a_webhook_the_alert_is_logged(monkeypatch, caplog, home):
    monkeypatch.delenv("AIRFLOW_CONN_AIGC_ALERTS", raising=False)
    with caplog.at_level(logging.ERROR, logger="aigc_airflow.alerts"):
        on_failure(CONTEXT)
    assert any("worker 1 died" in r.getMessage() for r in caplog.records)


def test_a_run_failed_by_a_task_does_not_alert_again(monkeypatch):
    received, server = _webhook(monkeypatch)
    run = {"dag_run": CONTEXT["dag_run"]}
    try:
        on_failure(CONTEXT)  # the failed task's
        on_run_failure(run | {"reason": "task_failure"})  # then the DAG's
        on_run_failure(run | {"reason": "timed_out"})  # a run no task failed
    finally:
        server.shutdown()
    assert [(p["task_id"], p["error"]) for p, _ in received] == [
        ("train", "worker 1 died"), (None, "timed_out")]
