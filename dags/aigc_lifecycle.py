"""aigc_lifecycle: data to champion — base model, ingest, validate, preprocess, train,
register, compress, evaluate, canary, promote, and the run report. Wiring only; every stage lives in
the `tasks` package."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from aigc_airflow import config_params, stage_task
from aigc_airflow.alerts import on_failure
from aigc_airflow.feedback import FEEDBACK_SNAPSHOTS
from aigc_airflow.report import ReportOperator
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, task

# A cron expression or preset, or "none" (then only feedback snapshots and manual or REST
# triggers start runs).
SCHEDULE = os.environ.get("AIGC_LIFECYCLE_SCHEDULE", "@weekly")
TIMEOUTS = {
    # A hub or S3 download of a multi-GB checkpoint.
    "base_model": timedelta(hours=1),
    "ingest": timedelta(minutes=20),
    "validate": timedelta(minutes=20),
    "preprocess": timedelta(minutes=30),
    "train": timedelta(hours=6),
    "register": timedelta(minutes=20),
    "compress": timedelta(hours=2),
    "evaluate": timedelta(hours=1),
    # Steps x analysis interval x holds: the default policy needs at most about 16 minutes.
    "canary": timedelta(hours=2),
    "promote": timedelta(minutes=10),
    "report": timedelta(minutes=10),
}


@dag(
    dag_id="aigc_lifecycle",
    description="Validate, train, compress, evaluate, canary and promote the AIGC model",
    # Retrain weekly, or as soon as the feedback DAG exports a snapshot (one run per event).
    schedule=FEEDBACK_SNAPSHOTS if SCHEDULE.lower() == "none" else AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(SCHEDULE, timezone="UTC"), assets=FEEDBACK_SNAPSHOTS),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=config_params(),
    tags=["aigc", "lifecycle", "training"],
    on_failure_callback=on_failure,
    default_args={
        "on_failure_callback": on_failure,
        "owner": "ml-platform",
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
    },
    doc_md=__doc__,
)
def aigc_lifecycle():
    base = stage_task("base_model", execution_timeout=TIMEOUTS["base_model"])()
    ingest = stage_task("ingest", execution_timeout=TIMEOUTS["ingest"])()
    validate = stage_task("validate", execution_timeout=TIMEOUTS["validate"])({"ingest": ingest})
    preprocess = stage_task("preprocess", execution_timeout=TIMEOUTS["preprocess"])(
        {"validate": validate, "base_model": base})
    train = stage_task("train", execution_timeout=TIMEOUTS["train"])(
        {"preprocess": preprocess, "base_model": base})
    register = stage_task("register", execution_timeout=TIMEOUTS["register"])(
        {"train": train, "ingest": ingest, "base_model": base})
    compress = stage_task("compress", execution_timeout=TIMEOUTS["compress"])(
        {"register": register, "preprocess": preprocess})
    evaluate = stage_task("evaluate", execution_timeout=TIMEOUTS["evaluate"])(
        {"compress": compress, "preprocess": preprocess})
    canary = stage_task("canary", execution_timeout=TIMEOUTS["canary"])(
        {"evaluate": evaluate, "preprocess": preprocess})
    promote = stage_task("promote", execution_timeout=TIMEOUTS["promote"])(
        {"evaluate": evaluate, "canary": canary})
    # After everything, failed or not: the run's HTML report, linked from the task.
    promote >> ReportOperator(execution_timeout=TIMEOUTS["report"])

    # The report succeeds on a failed run; this leaf keeps the run's state failed then.
    # The failed stage has alerted already: no second alert from here.
    @task(trigger_rule="one_failed", execution_timeout=TIMEOUTS["report"], retries=0,
          on_failure_callback=None)
    def run_failed() -> None:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException("a stage failed: see its log and the run report")

    promote >> run_failed()


aigc_lifecycle()
