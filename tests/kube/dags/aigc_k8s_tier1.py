"""aigc_k8s_tier1: one lifecycle stage as this deployment's task, fed a prepared sample.

The tier-1 tests run it with `airflow dags test` against a real kube-apiserver: the stage task
comes from the same factory as in aigc_lifecycle (a pod task once AIGC_KUBERNETES_CONFIG is
set), its upstream hands it the inputs the test prepared, and its downstream records the XCom
it received.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path

from aigc_airflow import config_params, stage_task
from airflow.sdk import dag, task


@dag(dag_id="aigc_k8s_tier1", schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
     params=config_params(), tags=["aigc", "test"], default_args={"retries": 0})
def aigc_k8s_tier1():
    @task
    def prepared() -> dict:
        return json.loads(os.environ["AIGC_TIER1_INPUTS"])

    @task
    def record(result: dict) -> None:
        Path(os.environ["AIGC_TIER1_OUT"]).write_text(json.dumps(result, sort_keys=True))

    stage = os.environ.get("AIGC_TIER1_STAGE", "train")
    record(stage_task(stage, execution_timeout=timedelta(minutes=10))(prepared()))


aigc_k8s_tier1()
