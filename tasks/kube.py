"""Kubernetes settings and manifests: the train stage as a pod, or as a Kubeflow MPIJob.

Everything here is plain data (dicts, dataclasses) so it renders and validates offline; the
Airflow glue in plugins/aigc_airflow/kube.py submits it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tasks.errors import ConfigError
from tasks.runner import stage_argv
from tasks.stage import StageContext
from tasks.train.launch import launcher_argv

MPI_HOSTFILE = "/etc/mpi/hostfile"


@dataclass(frozen=True)
class KubernetesSettings:
    """Where and how pods run: a platform concern, so it comes from the deployment
    (a JSON file named by AIGC_KUBERNETES_CONFIG), not from a trigger's conf."""

    namespace: str = "aigc"
    image: str = "aigc-trainer:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    service_account: str = "aigc-trainer"
    kubernetes_conn_id: str = "kubernetes_default"
    gpus_per_worker: int = 0
    cpu: str = "2"
    memory: str = "8Gi"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, str]] = field(default_factory=list)
    # A ReadWriteMany volume mounted at the artifact root: payloads, data, checkpoints and
    # results sit at the same paths in the pod as on the Airflow worker.
    artifact_pvc: str = "aigc-artifacts"
    startup_timeout_seconds: int = 600
    schedule_timeout_seconds: int = 1800
    # Keep failed pods for their logs and events; delete successful ones.
    on_finish_action: str = "delete_succeeded_pod"
    mpijob_poll_seconds: int = 15

    def __post_init__(self) -> None:
        if self.gpus_per_worker < 0:
            raise ConfigError("gpus_per_worker: must be >= 0")
        if self.on_finish_action not in ("delete_pod", "delete_succeeded_pod", "keep_pod"):
            raise ConfigError(f"on_finish_action: {self.on_finish_action!r} is not one of "
                              "delete_pod, delete_succeeded_pod, keep_pod")

    @classmethod
    def from_env(cls) -> KubernetesSettings:
        path = os.environ.get("AIGC_KUBERNETES_CONFIG")
        if not path:
            return cls()
        data = json.loads(Path(path).read_text())
        unknown = sorted(set(data) - set(asdict(cls())))
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown Kubernetes setting in {path}")
        return cls(**data)

    def resources(self) -> dict[str, dict[str, str]]:
        """Requests equal limits (Guaranteed QoS); GPUs must be whole and equal anyway."""
        amount = {"cpu": self.cpu, "memory": self.memory}
        if self.gpus_per_worker:
            amount["nvidia.com/gpu"] = str(self.gpus_per_worker)
        return {"requests": dict(amount), "limits": dict(amount)}


def label_value(value: str) -> str:
    """A label value (<= 63 chars, alphanumeric ends); long run ids keep a hash suffix."""
    clean = "".join(c if c.isalnum() or c in "-_." else "-" for c in value).strip("-_.")
    if len(clean) <= 63:
        return clean
    digest = hashlib.sha256(value.encode()).hexdigest()[:10]
    return f"{clean[:52].rstrip('-_.')}-{digest}"


def labels(ctx: StageContext) -> dict[str, str]:
    return {"app.kubernetes.io/part-of": "aigc-lifecycle", "aigc/dag-id": label_value(ctx.dag_id),
            "aigc/run-id": label_value(ctx.run_id), "aigc/stage": ctx.stage}


def job_name(ctx: StageContext) -> str:
    """Deterministic per DAG run and stage: a retry finds its job instead of adding one."""
    digest = hashlib.sha256(f"{ctx.dag_id}/{ctx.run_id}/{ctx.stage}".encode()).hexdigest()[:12]
    return f"aigc-{ctx.stage}-{digest}"


def container_env(ctx: StageContext) -> dict[str, str]:
    """Settings travel by env; thread counts do not (the launcher sizes them in the pod)."""
    return ctx.settings.to_env() | {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


def pod_command(ctx: StageContext) -> list[str]:
    """Exactly the argv the local runner executes."""
    return stage_argv(ctx.stage, str(ctx.payload_path))


def _volume(settings: KubernetesSettings, ctx: StageContext) -> tuple[dict, dict]:
    volume = {"name": "artifacts",
              "persistentVolumeClaim": {"claimName": settings.artifact_pvc}}
    mount = {"name": "artifacts", "mountPath": str(ctx.settings.artifact_root)}
    return volume, mount


def pod_spec(settings: KubernetesSettings, ctx: StageContext, name: str, command: list[str],
             env: dict[str, str]) -> dict[str, Any]:
    """One container with the artifact volume, resources and placement from settings: the
    stage pod and both MPIJob replica templates are built from it."""
    volume, mount = _volume(settings, ctx)
    spec: dict[str, Any] = {
        "serviceAccountName": settings.service_account,
        "restartPolicy": "Never",
        "containers": [{
            "name": name, "image": settings.image, "imagePullPolicy": settings.image_pull_policy,
            "command": command, "env": [{"name": k, "value": v} for k, v in env.items()],
            "resources": settings.resources(), "volumeMounts": [mount],
        }],
        "volumes": [volume],
    }
    if settings.node_selector:
        spec["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        spec["tolerations"] = [dict(t) for t in settings.tolerations]
    return spec


def mpijob_manifest(ctx: StageContext, settings: KubernetesSettings) -> dict[str, Any]:
    """A kubeflow.org/v2beta1 MPIJob: one launcher running horovodrun over `nodes` workers,
    each with cfg.workers slots (one process per GPU or per core group)."""
    cfg = ctx.config  # LifecycleConfig guarantees launcher=horovod when nodes > 1
    nodes, slots = cfg.nodes, cfg.workers
    # world_size = workers per node x nodes: one horovodrun process per slot.
    command = launcher_argv(cfg, str(ctx.payload_path), hostfile=MPI_HOSTFILE)
    meta = {"name": job_name(ctx), "namespace": settings.namespace, "labels": labels(ctx)}
    launcher = pod_spec(settings, ctx, "launcher", command, container_env(ctx))
    # The launcher only runs horovodrun; it needs no GPU.
    launcher["containers"][0]["resources"] = {"requests": {"cpu": "1", "memory": "2Gi"},
                                              "limits": {"cpu": "1", "memory": "2Gi"}}
    worker = pod_spec(settings, ctx, "worker", ["/usr/sbin/sshd", "-De"],
                       container_env(ctx))
    return {
        "apiVersion": "kubeflow.org/v2beta1", "kind": "MPIJob", "metadata": meta,
        "spec": {
            "slotsPerWorker": slots,
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": 0,
                          "activeDeadlineSeconds": settings.schedule_timeout_seconds
                          + 6 * 3600},
            "mpiImplementation": "OpenMPI",
            "mpiReplicaSpecs": {
                "Launcher": {"replicas": 1, "restartPolicy": "Never",
                             "template": {"metadata": {"labels": labels(ctx)}, "spec": launcher}},
                "Worker": {"replicas": nodes, "restartPolicy": "Never",
                           "template": {"metadata": {"labels": labels(ctx)}, "spec": worker}},
            },
        },
    }


class MPIJobFailed(RuntimeError):
    """The MPIJob ended Failed; the message carries the operator's reason and message."""


def mpijob_outcome(job: dict[str, Any]) -> str | None:
    """'succeeded', or None while running; raises MPIJobFailed when the job failed."""
    for cond in job.get("status", {}).get("conditions", []):
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Succeeded":
            return "succeeded"
        if cond.get("type") == "Failed":
            raise MPIJobFailed(f"MPIJob {job['metadata']['name']} failed: "
                               f"{cond.get('reason', '?')}: {cond.get('message', '')}")
    return None
