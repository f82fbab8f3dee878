"""Stage tasks: the only place that decides how a stage runs for Airflow."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tasks.config import CheckedConfig, LifecycleConfig, params_schema

# Stages that move to a pod with compute_target=kubernetes (the heavy ones, which may want
# a GPU: training, and compression for TensorRT); the rest stay light processes.
POD_STAGES = frozenset({"train", "compress"})
# Stages that steer the model server; they read its address and keys from a Connection.
SERVER_STAGES = frozenset({"canary", "promote"})
SERVER_CONNECTION = "aigc_model_server"


def server_env(conn_id: str = SERVER_CONNECTION) -> dict[str, str]:
    """The model server's URL and keys from an Airflow Connection (http type: host, port,
    schema; password = admin key; extra {"api_key": ...} = a client key for synthetic load).
    Unset: empty, and the canary starts a local server of its own."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return {}
    scheme = conn.schema or "http"
    env = {"AIGC_SERVER_URL": f"{scheme}://{conn.host}" + (f":{conn.port}" if conn.port else "")}
    if conn.password:
        env["AIGC_ADMIN_KEY"] = conn.password
    if api_key := conn.extra_dejson.get("api_key"):
        env["AIGC_API_KEY"] = api_key
    return env


# Deployment-wide defaults for a DAG's Params (JSON text or a file path), e.g. what
# scheduled and Asset-triggered runs use; a trigger's conf still overrides them.
DEFAULTS_ENV = {"LifecycleConfig": "AIGC_LIFECYCLE_DEFAULTS",
                "FeedbackConfig": "AIGC_FEEDBACK_DEFAULTS"}


def config_params(cls: type[CheckedConfig] = LifecycleConfig) -> dict[str, Any]:
    """Airflow Params generated from a config class: the UI form and REST conf validation."""
    import os

    from airflow.sdk import Param

    source = os.environ.get(DEFAULTS_ENV.get(cls.__name__, ""), "")
    defaults = cls.load(source).to_dict() if source.strip() else None
    if cls is LifecycleConfig:
        # The form offers where this deployment runs heavy stages: the graph is built for it.
        defaults = (defaults or cls().to_dict()) | {"compute_target": offered_target()}
    return {
        name: Param(spec.pop("default"), description=spec.pop("description"), **spec)
        for name, spec in params_schema(cls, defaults).items()
    }


def offered_target() -> str:
    """Where this deployment runs heavy stages: Kubernetes once it names its cluster settings."""
    from tasks.kube import on_kubernetes

    return "kubernetes" if on_kubernetes() else "local"


def context_config(params: dict[str, Any], conf: dict[str, Any] | None):
    """The run's config. Airflow has validated known conf keys against the Params but lets
    unknown ones through; merging conf back in makes an unknown key a named error."""
    from tasks.errors import ConfigError

    cfg = LifecycleConfig.from_dict(dict(params) | dict(conf or {}))
    # The graph was built for one place (pod tasks or local ones): a run cannot ask for the
    # other.
    if cfg.compute_target != (offered := offered_target()):
        raise ConfigError(f"compute_target: {cfg.compute_target!r} is not offered by this "
                          f"deployment, which runs heavy stages on {offered!r} "
                          + ("(set AIGC_KUBERNETES_CONFIG to run them as pods)"
                             if offered == "local" else "(AIGC_KUBERNETES_CONFIG is set)"))
    return cfg


def stage_context(stage: str, context: Any, inputs: dict[str, Any]):
    """The StageContext of a running task: its run, its config, its upstream results."""
    from tasks.stage import StageContext

    dag_run = context["dag_run"]
    return StageContext(stage=stage, dag_id=dag_run.dag_id, run_id=dag_run.run_id,
                        config=context_config(context["params"], dag_run.conf), inputs=inputs)


def stage_task(stage: str, *, execution_timeout: timedelta):
    """A stage's task: a pod task (train, compress) when the deployment runs on Kubernetes,
    else a TaskFlow task running `python -m tasks <stage>`; upstream results come as a dict."""
    if stage in POD_STAGES and offered_target() == "kubernetes":
        return _pod_task(stage, execution_timeout=execution_timeout)
    from airflow.sdk import task

    @task(task_id=stage, execution_timeout=execution_timeout)
    def run(upstream: dict[str, Any] | None = None) -> dict[str, Any]:
        from airflow.sdk import get_current_context
        from airflow.sdk.exceptions import AirflowFailException

        from tasks.errors import BadInput
        from tasks.runner import run_process

        context = get_current_context()
        inputs = dict(upstream or {})
        if stage == "ingest":
            from aigc_airflow.feedback import triggering_exports

            if exports := triggering_exports(context):
                inputs["feedback"] = {"exports": exports}
        try:
            ctx = stage_context(stage, context, inputs)
            return run_process(ctx, env=server_env() if stage in SERVER_STAGES else None)
        except BadInput as exc:
            # Bad config or data fails the same way on every retry: fail now, say why.
            raise AirflowFailException(str(exc)) from exc

    return run


def _pod_task(stage: str, *, execution_timeout: timedelta):
    def make(upstream: dict[str, Any] | None = None):
        from aigc_airflow.kube import StagePodOperator
        from tasks.kube import KubernetesSettings

        return StagePodOperator(stage=stage, stage_inputs=upstream or {},
                                settings=KubernetesSettings.from_env(),
                                execution_timeout=execution_timeout).output

    return make
