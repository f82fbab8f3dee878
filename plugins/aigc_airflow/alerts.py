"""Failure callbacks: a structured alert to a webhook named by an Airflow Connection, or to
the log when none is configured. A failing alert never masks the failure it reports."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)
ALERT_CONNECTION = "aigc_alerts"


def alert_payload(context: dict[str, Any]) -> dict[str, Any]:
    """The alert as JSON: which DAG, run and task failed, on which try, and why."""
    ti = context.get("task_instance") or context.get("ti")
    dag_run = context.get("dag_run")
    exception = context.get("exception") or context.get("reason")
    return {
        "source": "airflow",
        "severity": "critical",
        "summary": f"{getattr(dag_run, 'dag_id', '?')}"
                   f"{'.' + ti.task_id if ti else ''} failed",
        "dag_id": getattr(dag_run, "dag_id", None) or getattr(ti, "dag_id", None),
        "run_id": getattr(dag_run, "run_id", None) or getattr(ti, "run_id", None),
        "task_id": getattr(ti, "task_id", None),
        "try_number": getattr(ti, "try_number", None),
        "max_tries": getattr(ti, "max_tries", None),
        "error": str(exception)[:2000] if exception else None,
        "log_url": getattr(ti, "log_url", None),
        "at": datetime.now(UTC).isoformat(),
    }


def webhook(conn_id: str = ALERT_CONNECTION) -> tuple[str, dict[str, str]] | None:
    """(url, headers) from an http Connection: schema/host/port, extra `endpoint` (path) and
    an optional password sent as a bearer token; None when the Connection is unset."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None
    port = f":{conn.port}" if conn.port else ""
    url = f"{conn.schema or 'https'}://{conn.host}{port}{conn.extra_dejson.get('endpoint', '')}"
    headers = {"Content-Type": "application/json"}
    if conn.password:
        headers["Authorization"] = f"Bearer {conn.password}"
    return url, headers


def on_run_failure(context: dict[str, Any]) -> None:
    """The DAG's callback: alerts only for a run that failed without a failed task's alert
    (its deadline passed, its tasks deadlocked); a failed task has alerted already."""
    if context.get("reason") == "task_failure":
        log.info("run failed: the failed task's own alert went out")
        return
    on_failure(context)


def on_failure(context: dict[str, Any]) -> None:
    payload = alert_payload(context)
    try:
        target = webhook()
    except Exception:  # noqa: BLE001 - a broken Connection must not hide the failure
        log.exception("alert webhook Connection %r unusable", ALERT_CONNECTION)
        target = None
    if target is None:
        log.error("ALERT (no %s Connection): %s", ALERT_CONNECTION, json.dumps(payload))
        return
    import requests

    url, headers = target
    try:
        requests.post(url, data=json.dumps(payload), headers=headers, timeout=10
                      ).raise_for_status()
        log.info("alert posted to %s", url)
    except requests.RequestException:
        log.exception("alert could not be posted; it was: %s", json.dumps(payload))
