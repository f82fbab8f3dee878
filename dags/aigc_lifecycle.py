"""aigc_lifecycle: from data (and, optionally, a base checkpoint) to a champion model.
Wiring only; every stage lives in the `tasks` package and runs as `python -m tasks <stage>`.

Stages, and where to look at each:
- **base_model**: resolves and checks `base_model` (a folder, `s3://`, `models:/…`, a hub
  id; empty: a small GPT-2 from scratch). Task log.
- **ingest**: `dataset_uri` (plus a feedback snapshot that triggered the run) into a
  content-addressed snapshot. Task log.
- **validate**: masks PII, runs the Great Expectations suite, stops the run on bad data.
  The run report's validation table.
- **preprocess**: splits by prompt; the base model's tokenizer (or a BPE one for the demo)
  with its chat template. Task log.
- **train**: `launcher` horovod / ddp / fsdp / single, full or LoRA, resumable. The task's
  **MLflow run** link (loss curves); every stage task has one.
- **register**: the model into MLflow's registry as `challenger`. The version's description.
- **compress**: INT8 / pruned / distilled candidates behind a quality, size and speed gate.
  The report's compression table.
- **evaluate**: offline A/B against `champion` on held-out data. The report's A/B chart.
- **canary**: 5 → 25 → 50 → 100 % of live traffic with automatic rollback. The report's
  canary timeline.
- **promote**: moves `champion` when evaluation and canary agree. The version's description.
- **report**: the run on one HTML page: the report task's **Run report** link.

Knobs that matter most (Trigger → the form's sections): **Data** `dataset_uri`; **Model**
`base_model`, `finetune_method`; **Training** `launcher`, `workers`, `max_steps`,
`compute_target`; **Compression** `compress_methods`, `compress_policy` and the gate's
limits; **Canary** `canary_steps`. A bad value is refused when the run is triggered, naming
the field; rules between fields (width vs heads, warm-up vs steps) fail the first tasks with
the field named.

Schedule: weekly (`AIGC_LIFECYCLE_SCHEDULE`) and whenever `aigc_feedback` exports a feedback
snapshot; the DAG starts paused — unpause it (the toggle, or the trigger dialog's
"unpause" box, which Airflow pre-selects) for schedules and triggers to run.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from aigc_airflow import config_params, stage_task
from aigc_airflow.alerts import on_failure, on_run_failure
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
    description=f"Train, compress, evaluate, canary and promote the model; runs {SCHEDULE} and on "
                "each feedback snapshot",
    # Retrain weekly, or as soon as the feedback DAG exports a snapshot (one run per event).
    schedule=FEEDBACK_SNAPSHOTS if SCHEDULE.lower() == "none" else AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(SCHEDULE, timezone="UTC"), assets=FEEDBACK_SNAPSHOTS),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=config_params(),
    tags=["aigc", "lifecycle", "training"],
    on_failure_callback=on_run_failure,
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
    # The failed stage has alerted already: no second alert from here, nor from the DAG.
    @task(trigger_rule="one_failed", execution_timeout=TIMEOUTS["report"], retries=0,
          on_failure_callback=None)
    def run_failed() -> None:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException("a stage failed: see its log and the run report")

    promote >> run_failed()


aigc_lifecycle()
