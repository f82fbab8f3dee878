"""MLflow bookkeeping: one parent run per DAG run, one nested run per stage attempt."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tasks.settings import Settings
from tasks.stage import StageContext

TAG_DAG_ID = "aigc.dag_id"
TAG_RUN_ID = "aigc.dag_run_id"
TAG_STAGE = "aigc.stage"
TAG_AIRFLOW_URL = "aigc.airflow_url"
NOTE = "mlflow.note.content"  # what MLflow shows as a run's description


def airflow_url(dag_id: str, run_id: str, task_id: str | None = None) -> str | None:
    """The Airflow UI page of a DAG run (or of one of its tasks), from the API server's
    public address (`AIRFLOW__API__BASE_URL`); None where that is not known."""
    base = os.environ.get("AIRFLOW__API__BASE_URL", "").rstrip("/")
    if not base:
        return None
    page = f"{base}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"
    return f"{page}/tasks/{quote(task_id, safe='')}" if task_id else page


def mlflow_ui_url() -> str:
    """Where people open MLflow (links from Airflow and the report point there)."""
    return os.environ.get("AIGC_MLFLOW_UI_URL", "http://127.0.0.1:5000").rstrip("/")


# MLflow's UI opens on its GenAI view (traces) unless a page asks for the training view.
TRAINING_VIEW = "?workflowType=machine_learning"


def run_url(experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """A run's page in the MLflow UI, or one of its artifacts in the artifact viewer."""
    page = f"{mlflow_ui_url()}/#/experiments/{experiment_id}/runs/{run_id}"
    return (f"{page}/artifacts/{artifact}" if artifact else page) + TRAINING_VIEW


def stage_run_url(dag_id: str, run_id: str, stage: str) -> str | None:
    """The MLflow UI page of one stage's run in one DAG run (its newest attempt); None when
    it has none (yet)."""
    import mlflow

    settings = Settings.from_env()
    # Called inside Airflow's API server: a client of its own, no process-wide MLflow state.
    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is None:
        return None
    found = client.search_runs([experiment.experiment_id], max_results=1, order_by=[
        "attributes.start_time DESC"], filter_string=(
        f"tags.`{TAG_DAG_ID}` = '{dag_id}' and tags.`{TAG_RUN_ID}` = '{run_id}' and "
        f"tags.`{TAG_STAGE}` = '{stage}'"))
    return run_url(experiment.experiment_id, found[0].info.run_id) if found else None


def airflow_link(ctx: StageContext, stage: str | None) -> str:
    """The DAG run (or its stage's task) as Markdown: a link where Airflow's address is
    known. The run id is code: its underscores would otherwise read as emphasis."""
    url = airflow_url(ctx.dag_id, ctx.run_id, stage)
    return f"[`{ctx.run_id}`]({url})" if url else f"`{ctx.run_id}`"


def _links(ctx: StageContext, stage: str | None) -> dict[str, str]:
    """Tags that lead from an MLflow run back to Airflow, shown as the run's description."""
    url = airflow_url(ctx.dag_id, ctx.run_id, stage)
    where = f"stage `{stage}` of " if stage else ""
    target = airflow_link(ctx, stage)
    tags = {NOTE: f"{where.capitalize() or 'All stages of '}Airflow DAG run {target} of "
                  f"`{ctx.dag_id}`."}
    return tags | ({TAG_AIRFLOW_URL: url} if url else {})


@contextlib.contextmanager
def _first_contact(tracking_uri: str) -> Iterator[None]:
    """One process at a time opens a SQLite store: the first contact creates and migrates
    it, and two stages starting together on a new store (ingest and base_model) would both
    migrate it, one failing. Other stores migrate under their own server's control."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    lock = Path(tracking_uri.removeprefix("sqlite:///") + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def configure(settings: Settings) -> str:
    """Point MLflow at the settings' store and return the experiment id (created once)."""
    import mlflow
    import mlflow.exceptions

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(settings.tracking_uri)
    with _first_contact(settings.tracking_uri):
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(settings.experiment)
    if exp is not None:
        return exp.experiment_id
    Path(settings.mlflow_artifact_root).mkdir(parents=True, exist_ok=True)
    try:
        return client.create_experiment(
            settings.experiment, artifact_location=Path(settings.mlflow_artifact_root).as_uri()
            if "://" not in settings.mlflow_artifact_root else settings.mlflow_artifact_root,
        )
    except mlflow.exceptions.MlflowException:  # a concurrent stage created it first
        exp = client.get_experiment_by_name(settings.experiment)
        if exp is None:
            raise
        return exp.experiment_id


def parent_run_id(ctx: StageContext, experiment_id: str) -> str:
    """Find or create the DAG run's parent run, so retries and later stages share it."""
    import mlflow

    client = mlflow.MlflowClient()
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_RUN_ID}` = '{ctx.run_id}' and tags.`{TAG_DAG_ID}` = "
        f"'{ctx.dag_id}' and tags.`{TAG_STAGE}` = 'parent'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id, run_name=f"{ctx.dag_id}:{ctx.run_id}",
        tags={TAG_RUN_ID: ctx.run_id, TAG_DAG_ID: ctx.dag_id, TAG_STAGE: "parent"}
        | _links(ctx, None),
    )
    return run.info.run_id


@dataclass
class StageRun:
    """Logging handle of one stage's nested run."""

    run_id: str
    parent_id: str

    def log_params(self, params: dict[str, Any]) -> None:
        import mlflow

        mlflow.log_params(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None,
                    parent: bool = False) -> None:
        import mlflow

        mlflow.log_metrics(metrics, step=step)
        if parent:
            client = mlflow.MlflowClient()
            for key, value in metrics.items():
                client.log_metric(self.parent_id, key, value, step=step or 0)

    def set_tags(self, tags: dict[str, Any], parent: bool = False) -> None:
        import mlflow

        mlflow.set_tags(tags)
        if parent:
            client = mlflow.MlflowClient()
            for key, value in tags.items():
                client.set_tag(self.parent_id, key, str(value))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        import mlflow

        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        import mlflow

        mlflow.log_artifacts(str(folder), artifact_path=artifact_path)


@contextlib.contextmanager
def stage_run(ctx: StageContext) -> Iterator[StageRun]:
    """Open the parent run and a nested run for this stage; a raised error marks both FAILED."""
    import mlflow

    experiment_id = configure(ctx.settings)
    parent = parent_run_id(ctx, experiment_id)
    tags = {TAG_RUN_ID: ctx.run_id, TAG_DAG_ID: ctx.dag_id, TAG_STAGE: ctx.stage} | _links(
        ctx, ctx.stage)
    with (
        mlflow.start_run(run_id=parent, experiment_id=experiment_id),
        mlflow.start_run(run_name=ctx.stage, nested=True, experiment_id=experiment_id,
                         tags=tags) as run,
    ):
        yield StageRun(run_id=run.info.run_id, parent_id=parent)
