"""Run a stage on Kubernetes: a KubernetesPodOperator pod, or a Kubeflow MPIJob for nodes > 1."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from tasks.kube import (
    KubernetesSettings,
    job_name,
    labels,
    mpijob_manifest,
    mpijob_outcome,
    pod_command,
)
from tasks.stage import StageContext

log = logging.getLogger(__name__)
MPIJOB = {"group": "kubeflow.org", "version": "v2beta1", "plural": "mpijobs"}


def pod_operator(ctx: StageContext, settings: KubernetesSettings):
    """The pod that runs `python -m tasks <stage>` with the same argv and env as locally."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    from tasks.kube import container_env, pod_spec

    # The operator's own container is named "base"; the template's container merges into it.
    spec = pod_spec(settings, ctx, "base", pod_command(ctx), container_env(ctx))
    return KubernetesPodOperator(
        task_id=f"{ctx.stage}_pod",
        kubernetes_conn_id=settings.kubernetes_conn_id,
        namespace=settings.namespace,
        name=job_name(ctx),
        random_name_suffix=True,
        pod_template_dict={"apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": spec},
        image=settings.image,
        labels=labels(ctx),
        # A retried task reattaches to its still-running pod instead of starting another.
        reattach_on_restart=True,
        on_finish_action=settings.on_finish_action,
        startup_timeout_seconds=settings.startup_timeout_seconds,
        schedule_timeout_seconds=settings.schedule_timeout_seconds,
        get_logs=True,
        log_events_on_failure=True,
    )


def run_pod(ctx: StageContext, context: Any, settings: KubernetesSettings) -> dict[str, Any]:
    ctx.hand_off()
    pod_operator(ctx, settings).execute(context)
    return ctx.read_result()


def run_mpijob(ctx: StageContext, settings: KubernetesSettings, api=None) -> dict[str, Any]:
    """Submit (or find, on a retry) the MPIJob, wait for its final condition, read the result."""
    if api is None:
        from kubernetes import client, config

        config.load_incluster_config() if _in_cluster() else config.load_kube_config()
        api = client.CustomObjectsApi()
    ctx.hand_off()
    manifest = mpijob_manifest(ctx, settings)
    name = manifest["metadata"]["name"]
    try:
        api.create_namespaced_custom_object(namespace=settings.namespace, body=manifest,
                                            **MPIJOB)
        log.info("submitted MPIJob %s/%s", settings.namespace, name)
    except Exception as exc:  # 409: a previous try's job; wait on it rather than duplicate
        if getattr(exc, "status", None) != 409:
            raise
        log.info("MPIJob %s exists (a previous try); waiting on it", name)
    while True:
        job = api.get_namespaced_custom_object(namespace=settings.namespace, name=name,
                                               **MPIJOB)
        if mpijob_outcome(job) == "succeeded":
            return ctx.read_result()
        time.sleep(settings.mpijob_poll_seconds)


def _in_cluster() -> bool:
    return "KUBERNETES_SERVICE_HOST" in os.environ


def run_remote(ctx: StageContext, context: Any) -> dict[str, Any]:
    settings = KubernetesSettings.from_env()
    if ctx.config.nodes > 1:
        return run_mpijob(ctx, settings)
    return run_pod(ctx, context, settings)
