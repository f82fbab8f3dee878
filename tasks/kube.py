"""Kubernetes settings and manifests: a stage as a pod, multi-node training as a Kubeflow job.

Everything here is plain data (dicts, dataclasses) so it renders and validates offline; the
Airflow glue in plugins/aigc_airflow/kube.py submits it and watches it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tasks import kubecheck
from tasks.errors import BadInput, ConfigError
from tasks.runner import stage_argv
from tasks.stage import StageContext
from tasks.train.preempt import GRACE_ENV

SETTINGS_ENV = "AIGC_KUBERNETES_CONFIG"
# mpi-operator names the hostfile it mounts in the launcher (/etc/mpi/hostfile) here (OpenMPI),
# and marks the launcher's role: only there does the train stage use the hostfile.
MPI_HOSTFILE_ENV = "OMPI_MCA_orte_default_hostfile"
MPI_ROLE_ENV = "K_MPI_JOB_ROLE"


def mpi_hostfile() -> str | None:
    """The hostfile of an MPIJob's launcher; None anywhere else (an HPC login node may set
    the OpenMPI variable for its own reasons)."""
    if os.environ.get(MPI_ROLE_ENV) != "launcher":
        return None
    return os.environ.get(MPI_HOSTFILE_ENV)
FINISH_ACTIONS = ("delete_pod", "delete_succeeded_pod", "keep_pod")
PREEMPT_MARGIN_S = 10  # of the pod's grace period, left for the process to exit
TRAIN_TIMEOUT_SECONDS = 6 * 3600  # the train task's execution_timeout (dags/aigc_lifecycle.py)


@dataclass(frozen=True)
class KubernetesSettings:
    """Where and how pods run: a platform concern, so it comes from the deployment
    (a JSON file named by AIGC_KUBERNETES_CONFIG), not from a trigger's conf. Every value
    the API server would refuse is refused here, naming the setting, before a pod is built."""

    namespace: str = "aigc"
    image: str = "aigc-trainer:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    service_account: str = "aigc-trainer"
    kubernetes_conn_id: str = "kubernetes_default"
    gpus_per_worker: int = 0
    # The extended resource a GPU is requested as (nvidia.com/gpu, amd.com/gpu, ...).
    gpu_resource: str = "nvidia.com/gpu"
    cpu: str = "2"
    memory: str = "8Gi"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    # A ReadWriteMany volume mounted at the artifact root: payloads, data, checkpoints and
    # results sit at the same paths in the pod as on the Airflow worker.
    artifact_pvc: str = "aigc-artifacts"
    startup_timeout_seconds: int = 600
    schedule_timeout_seconds: int = 1800
    # Spot and preemptible nodes: the time a pod gets between SIGTERM and SIGKILL, in which
    # training writes its checkpoint; the retry resumes from it.
    termination_grace_seconds: int = 120
    # Keep failed pods for their logs and events; delete successful ones.
    on_finish_action: str = "delete_succeeded_pod"
    # The triggerer watches pods and jobs, so no worker slot is held while they run.
    deferrable: bool = True
    job_poll_seconds: int = 15

    def __post_init__(self) -> None:
        try:
            self._check()
        except BadInput as exc:
            raise ConfigError(f"Kubernetes setting {exc}") from None

    def _check(self) -> None:
        kinds = {"int": int, "str": str, "bool": bool, "dict[str, str]": dict,
                 "list[dict[str, Any]]": list}
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not kinds[str(f.type)]:
                raise BadInput(f"{f.name}: {value!r} must be a {f.type}")
        for i, tol in enumerate(self.tolerations):
            if not isinstance(tol, dict):
                raise BadInput(f"tolerations[{i}]: {tol!r} must be an object")
        kubecheck.dns_label("namespace", self.namespace)
        kubecheck.image("image", self.image)
        kubecheck.one_of("image_pull_policy", self.image_pull_policy, kubecheck.PULL_POLICIES)
        kubecheck.dns_subdomain("service_account", self.service_account)
        kubecheck.dns_subdomain("artifact_pvc", self.artifact_pvc)
        kubecheck.extended_resource("gpu_resource", self.gpu_resource)
        kubecheck.quantity("cpu", self.cpu)
        kubecheck.quantity("memory", self.memory)
        kubecheck.node_selector("node_selector", self.node_selector)
        for i, tol in enumerate(self.tolerations):
            kubecheck.toleration(f"tolerations[{i}]", tol)
        kubecheck.one_of("on_finish_action", self.on_finish_action, FINISH_ACTIONS)
        for name in ("gpus_per_worker", "termination_grace_seconds"):
            if getattr(self, name) < 0:
                raise BadInput(f"{name}: must be >= 0")
        for name in ("startup_timeout_seconds", "schedule_timeout_seconds", "job_poll_seconds"):
            if getattr(self, name) < 1:
                raise BadInput(f"{name}: must be >= 1")

    @classmethod
    def from_env(cls) -> KubernetesSettings:
        path = os.environ.get(SETTINGS_ENV)
        if not path:
            return cls()
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{SETTINGS_ENV}: cannot read {path}: {exc}") from None
        unknown = sorted(set(data) - set(asdict(cls())))
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown Kubernetes setting in {path}")
        return cls(**data)

    def job_deadline_seconds(self) -> int:
        """A job's own deadline: scheduling plus the train task's longest run (6 h), so a job
        whose task is gone cannot hold its nodes for ever."""
        return self.schedule_timeout_seconds + TRAIN_TIMEOUT_SECONDS

    def resources(self) -> dict[str, dict[str, str]]:
        """Requests equal limits (Guaranteed QoS); the server refuses a GPU request that
        differs from its limit, so there is one number for both."""
        amount = {"cpu": self.cpu, "memory": self.memory}
        if self.gpus_per_worker:
            amount[self.gpu_resource] = str(self.gpus_per_worker)
        return {"requests": dict(amount), "limits": dict(amount)}


def on_kubernetes() -> bool:
    """Whether this deployment runs heavy stages on Kubernetes (it names its cluster settings)."""
    return bool(os.environ.get(SETTINGS_ENV))


def label_value(value: str) -> str:
    """A label value (<= 63 ASCII chars, alphanumeric ends): run ids carry ':' and '+', and
    may carry any letter; long or rewritten ones keep a hash of the original."""
    clean = "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "-" for c in value)
    clean = clean.strip("-_.")
    if len(clean) <= 63 and clean == value:
        return clean
    digest = hashlib.sha256(value.encode()).hexdigest()[:10]
    return f"{clean[:52].rstrip('-_.')}-{digest}".lstrip("-")


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


def preempt_env(settings: KubernetesSettings) -> dict[str, str]:
    """Training's SIGTERM checkpoint must end within the pod's grace period, with time left
    for the process to exit before the kubelet's SIGKILL."""
    return {GRACE_ENV: str(max(1, settings.termination_grace_seconds - PREEMPT_MARGIN_S))}


def _env_list(env: dict[str, str]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in env.items()]


def placement(settings: KubernetesSettings) -> dict[str, Any]:
    """Service account, node pool and grace period: shared by every pod the stage makes."""
    spec: dict[str, Any] = {"serviceAccountName": settings.service_account,
                            "terminationGracePeriodSeconds": settings.termination_grace_seconds}
    if settings.node_selector:
        spec["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        spec["tolerations"] = [dict(t) for t in settings.tolerations]
    return spec


def pod_spec(settings: KubernetesSettings, ctx: StageContext, name: str, command: list[str],
             env: dict[str, str]) -> dict[str, Any]:
    """One container with the artifact volume, resources and placement from settings: the
    stage pod and the MPIJob replica templates are built from it."""
    volume, mount = _volume(settings, ctx)
    return {
        **placement(settings),
        "restartPolicy": "Never",
        "containers": [{
            "name": name, "image": settings.image, "imagePullPolicy": settings.image_pull_policy,
            "command": command, "env": _env_list(env | preempt_env(settings)),
            "resources": settings.resources(), "volumeMounts": [mount],
        }],
        "volumes": [volume],
    }


def mpijob_manifest(ctx: StageContext, settings: KubernetesSettings) -> dict[str, Any]:
    """A kubeflow.org/v2beta1 MPIJob (mpi-operator v0.6): the launcher runs the train stage
    itself — `python -m tasks train`, whose horovodrun reads the operator's hostfile — so the
    result is collected and the ranks' checksums compared exactly as on one node."""
    cfg = ctx.config
    meta = {"name": job_name(ctx), "namespace": settings.namespace, "labels": labels(ctx)}
    launcher = pod_spec(settings, ctx, "launcher", pod_command(ctx), container_env(ctx))
    # The launcher only starts horovodrun and checks the result; it needs no GPU.
    small = {"cpu": "1", "memory": "2Gi"}
    launcher["containers"][0]["resources"] = {"requests": dict(small), "limits": dict(small)}
    worker = pod_spec(settings, ctx, "worker", ["/usr/sbin/sshd", "-De"], container_env(ctx))
    return {
        "apiVersion": "kubeflow.org/v2beta1", "kind": "MPIJob", "metadata": meta,
        "spec": {
            "slotsPerWorker": cfg.workers,
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": 0,
                          "activeDeadlineSeconds": settings.job_deadline_seconds()},
            "mpiImplementation": "OpenMPI",
            # horovodrun needs every worker's sshd up before it starts.
            "launcherCreationPolicy": "WaitForWorkersReady",
            "mpiReplicaSpecs": {
                "Launcher": {"replicas": 1, "restartPolicy": "Never",
                             "template": {"metadata": {"labels": labels(ctx)}, "spec": launcher}},
                "Worker": {"replicas": cfg.nodes, "restartPolicy": "Never",
                           "template": {"metadata": {"labels": labels(ctx)}, "spec": worker}},
            },
        },
    }


TRAINJOB_RUNTIME = "torch-distributed"
# The torch runtime's one replicated job, and its container, are both named "node".
TRAINJOB_NODE = "node"
PATCH_MANAGER = "aigc-lifecycle"


def trainjob_manifest(ctx: StageContext, settings: KubernetesSettings) -> dict[str, Any]:
    """A trainer.kubeflow.org/v1alpha1 TrainJob (Kubeflow Trainer v2.3) on the torch runtime:
    every node runs the train stage; the runtime's PET_* variables make its torchrun join
    the others, and node 0 collects and checks the ranks' results. Volume, placement and
    grace period go in as a runtime patch (v2.2+; v2.0/2.1 called it podSpecOverrides)."""
    volume, mount = _volume(settings, ctx)
    pod = {"metadata": {"labels": labels(ctx)},
           "spec": {**placement(settings), "volumes": [volume],
                    "containers": [{"name": TRAINJOB_NODE, "volumeMounts": [mount]}]}}
    node_job = {"name": TRAINJOB_NODE, "template": {"spec": {"template": pod}}}
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": job_name(ctx), "namespace": settings.namespace,
                     "labels": labels(ctx)},
        "spec": {
            "runtimeRef": {"name": TRAINJOB_RUNTIME, "apiGroup": "trainer.kubeflow.org",
                           "kind": "ClusterTrainingRuntime"},
            "trainer": {
                "image": settings.image, "command": pod_command(ctx),
                "env": _env_list(container_env(ctx) | preempt_env(settings)),
                "numNodes": ctx.config.nodes, "numProcPerNode": ctx.config.workers,
                "resourcesPerNode": settings.resources(),
            },
            "activeDeadlineSeconds": settings.job_deadline_seconds(),
            "runtimePatches": [{
                "manager": PATCH_MANAGER,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [node_job]}}},
            }],
        },
    }


@dataclass(frozen=True)
class JobKind:
    """A Kubeflow job resource and the conditions that end it."""

    kind: str
    group: str
    version: str
    plural: str
    succeeded: str
    failed: str

    @property
    def api(self) -> dict[str, str]:
        return {"group": self.group, "version": self.version, "plural": self.plural}


MPIJOB = JobKind("MPIJob", "kubeflow.org", "v2beta1", "mpijobs", "Succeeded", "Failed")
TRAINJOB = JobKind("TrainJob", "trainer.kubeflow.org", "v1alpha1", "trainjobs", "Complete",
                   "Failed")


def job_for(ctx: StageContext, settings: KubernetesSettings) -> tuple[JobKind, dict[str, Any]]:
    """Horovod across nodes is an MPIJob; torchrun (DDP, FSDP) a TrainJob."""
    if ctx.config.launcher == "horovod":
        return MPIJOB, mpijob_manifest(ctx, settings)
    return TRAINJOB, trainjob_manifest(ctx, settings)


def job_outcome(kind: JobKind, job: dict[str, Any]) -> str | None:
    """'succeeded', 'failed: <reason>: <message>', or None while it runs."""
    for cond in job.get("status", {}).get("conditions", []) or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == kind.succeeded:
            return "succeeded"
        if cond.get("type") == kind.failed:
            return f"failed: {cond.get('reason', '?')}: {cond.get('message', '')}"
    return None
