"""Links from Airflow into MLflow: each stage task opens its own MLflow run."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink

LIFECYCLE = "aigc_lifecycle"


class MlflowRunLink(BaseOperatorLink):
    """'MLflow run' on a lifecycle stage's task: the nested run that stage logged.

    Resolved by the API server when a person opens the task (a lookup by the run's tags),
    so it also finds the run of a stage that failed; empty (hidden) elsewhere."""

    name = "MLflow run"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from tasks.cli import STAGES
        from tasks.tracking import stage_run_url

        if ti_key.dag_id != LIFECYCLE or ti_key.task_id not in STAGES:
            return ""
        return stage_run_url(ti_key.dag_id, ti_key.run_id, ti_key.task_id) or ""
