"""MLflow bookkeeping: one parent run per DAG run, one nested run per stage attempt."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.settings import Settings
from tasks.stage import StageContext

TAG_DAG_ID = "aigc.dag_id"
TAG_RUN_ID = "aigc.dag_run_id"
TAG_STAGE = "aigc.stage"


def configure(settings: Settings) -> str:
    """Point MLflow at the settings' store and return the experiment id (created once)."""
    import mlflow
    import mlflow.exceptions

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(settings.tracking_uri)
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
        tags={TAG_RUN_ID: ctx.run_id, TAG_DAG_ID: ctx.dag_id, TAG_STAGE: "parent"},
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
    tags = {TAG_RUN_ID: ctx.run_id, TAG_DAG_ID: ctx.dag_id, TAG_STAGE: ctx.stage}
    with (
        mlflow.start_run(run_id=parent, experiment_id=experiment_id),
        mlflow.start_run(run_name=ctx.stage, nested=True, experiment_id=experiment_id,
                         tags=tags) as run,
    ):
        yield StageRun(run_id=run.info.run_id, parent_id=parent)
