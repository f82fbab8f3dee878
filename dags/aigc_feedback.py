"""aigc_feedback: watches what users say about the champion and retrains when it matters.
Wiring only; the logic lives in `tasks.feedback`.

- **analyze**: from the request/feedback store (`AIGC_FEEDBACK_DB`), the champion's
  negative-feedback rate and answer diversity in the last `window_hours` against the
  `baseline_hours` before, and the new well-rated feedback (thumbs up or rating ≥
  `min_rating`).
- **retrain_needed**: yes on volume (`min_new_feedback`) or drift
  (`max_negative_rate_increase`, `max_diversity_drop`), never within `cooldown_hours` of the
  last trigger; the reasons are in the task log.
- **export**: writes the new rows as a Parquet snapshot and emits the Asset event that starts
  `aigc_lifecycle`, which trains on exactly those rows.
- **retention**: deletes requests and feedback older than `AIGC_RETENTION_DAYS` (unset: kept),
  except rows an export not yet trained on still needs; removes the files of exports
  trained on before then. Erasure of one user: `python -m tasks.feedback erase --user ID`.

Schedule: hourly (`AIGC_FEEDBACK_SCHEDULE`); the DAG starts paused — unpause it to watch.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from aigc_airflow import config_params
from aigc_airflow.alerts import on_failure, on_run_failure
from aigc_airflow.feedback import FEEDBACK_SNAPSHOTS
from airflow.sdk import dag, task

from tasks.config import FeedbackConfig

SCHEDULE = os.environ.get("AIGC_FEEDBACK_SCHEDULE", "@hourly")


@dag(
    dag_id="aigc_feedback",
    description="Feedback volume and drift; triggers retraining through an Asset event",
    schedule=None if SCHEDULE.lower() == "none" else SCHEDULE,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # two runs must not both see the same rows as new
    params=config_params(FeedbackConfig),
    tags=["aigc", "feedback", "monitoring"],
    on_failure_callback=on_run_failure,
    default_args={
        "owner": "ml-platform",
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(minutes=15),
        "on_failure_callback": on_failure,
    },
    doc_md=__doc__,
)
def aigc_feedback():
    @task
    def analyze(params: dict[str, Any] | None = None) -> dict[str, Any]:
        from aigc_airflow.feedback import analyze_feedback

        return analyze_feedback(params or {})

    @task.short_circuit
    def retrain_needed(result: dict[str, Any]) -> bool:
        return bool(result["retrain"])

    @task(outlets=[FEEDBACK_SNAPSHOTS])
    def export(params: dict[str, Any] | None = None, dag_run=None, outlet_events=None,
               ) -> dict[str, Any]:
        from aigc_airflow.feedback import export_feedback
        from airflow.sdk.exceptions import AirflowSkipException

        exported = export_feedback(params or {}, dag_run.run_id)
        if not exported["row_count"]:
            # Skipped, so no Asset event: nothing new to train on after all.
            raise AirflowSkipException("no rows left to export")
        outlet_events[FEEDBACK_SNAPSHOTS].extra = {
            "export_id": exported["export_id"], "uri": exported["uri"],
            "rows": exported["row_count"]}
        return exported

    @task
    def retention() -> dict[str, Any]:
        from aigc_airflow.feedback import purge_expired

        return purge_expired()

    result = analyze()
    retrain_needed(result) >> export()
    retention()


aigc_feedback()
