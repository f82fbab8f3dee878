"""Kubernetes tier 0: render every pod and MPIJob offline, validate it, run its command here."""

from __future__ import annotations

import json
import os
import subprocess

import jsonschema
import kubernetes_validate
import pytest
from aigc_airflow.kube import StagePodOperator
from kubernetes.client import ApiClient

from tasks.config import LifecycleConfig
from tasks.kube import (
    KubernetesSettings,
    job_for,
    job_name,
    job_outcome,
    mpijob_manifest,
    trainjob_manifest,
)
from tasks.runner import localize, stage_argv
from tasks.stage import RESULT_FILE, StageContext, write_json
from tests.conftest import TINY, isolated_settings, train_context
from tests.kube.crds import MPIJOB, TRAINJOB

K8S_VERSION = "1.33.0"
SCHEMAS = {kind.kind: kind.schema() for kind in (MPIJOB, TRAINJOB)}
SETTINGS = {
    "cpu-only": KubernetesSettings(),
    "one-gpu": KubernetesSettings(
        gpus_per_worker=1, node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]),
    "eight-gpu": KubernetesSettings(gpus_per_worker=8, cpu="32", memory="256Gi",
                                    on_finish_action="keep_pod",
                                    node_selector={"pool": "a100"}),
}
RUN_ID = "scheduled__2026-11-23T00:00:00+00:00-with-a-very-long-suffix-that-exceeds-label-limits"


def _ctx(tmp_path, stage="train", **overrides) -> StageContext:
    cfg = LifecycleConfig.from_dict(TINY | {"compute_target": "kubernetes"} | overrides)
    return StageContext(stage=stage, dag_id="aigc_lifecycle", run_id=RUN_ID, config=cfg,
                        settings=isolated_settings(tmp_path))


def _validate_core(obj: dict) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _operator(ctx, settings) -> StagePodOperator:
    return StagePodOperator(stage=ctx.stage, settings=settings)


def _render_pod(ctx, settings) -> dict:
    return ApiClient().sanitize_for_serialization(_operator(ctx, settings).render(ctx))


@pytest.mark.parametrize("name", sorted(SETTINGS))
@pytest.mark.parametrize("launcher", ["horovod", "ddp", "single"])
def test_pod_renders_and_validates_strictly(tmp_path, name, launcher):
    settings = SETTINGS[name]
    ctx = _ctx(tmp_path, launcher=launcher)
    obj = _render_pod(ctx, settings)
    _validate_core(obj)
    container = obj["spec"]["containers"][0]
    assert container["command"] == stage_argv("train", str(ctx.stage_dir / "payload.json"))
    resources = container["resources"]
    assert resources["requests"] == resources["limits"]
    assert resources["limits"].get("nvidia.com/gpu") == (
        str(settings.gpus_per_worker) if settings.gpus_per_worker else None)
    assert (obj["spec"].get("nodeSelector") or {}) == settings.node_selector
    assert (obj["spec"].get("tolerations") or []) == settings.tolerations
    assert obj["spec"]["restartPolicy"] == "Never"
    assert container["image"] == settings.image and len(obj["spec"]["containers"]) == 1
    labels = obj["metadata"]["labels"]
    assert labels["aigc/stage"] == "train" and len(labels["aigc/run-id"]) <= 63
    mount = container["volumeMounts"][0]
    assert mount["mountPath"] == str(ctx.settings.artifact_root)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["AIGC_ARTIFACT_ROOT"] == str(ctx.settings.artifact_root)
    # SIGTERM's checkpoint ends inside the pod's grace period.
    assert 0 < float(env["AIGC_PREEMPT_GRACE_S"]) < obj["spec"][
        "terminationGracePeriodSeconds"]


def test_compress_runs_as_a_gpu_pod_with_its_own_command(tmp_path):
    """TensorRT needs a GPU: the compress stage is a pod stage too, with the same settings."""
    from aigc_airflow.stages import POD_STAGES

    assert "compress" in POD_STAGES
    ctx = _ctx(tmp_path, stage="compress", compress_methods=["modelopt_int8", "tensorrt_int8"])
    obj = _render_pod(ctx, SETTINGS["one-gpu"])
    _validate_core(obj)
    container = obj["spec"]["containers"][0]
    assert container["command"] == stage_argv("compress", str(ctx.stage_dir / "payload.json"))
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert obj["metadata"]["labels"]["aigc/stage"] == "compress"


def test_pod_operator_is_durable_deferrable_and_keeps_failures(tmp_path):
    op = _operator(_ctx(tmp_path), SETTINGS["one-gpu"])
    assert op.durable is True and op.deferrable is True
    assert op.on_finish_action.value == "delete_succeeded_pod"
    assert op.on_kill_action.value == "delete_pod"
    assert op.startup_timeout_seconds == 600 and op.schedule_timeout_seconds == 1800
    assert op.termination_grace_period == 120
    assert job_name(_ctx(tmp_path)) == job_name(_ctx(tmp_path))
    assert job_name(_ctx(tmp_path)) != job_name(_ctx(tmp_path, stage="compress"))


@pytest.mark.parametrize("name", sorted(SETTINGS))
@pytest.mark.parametrize("nodes", [2, 4])
def test_mpijob_renders_and_validates(tmp_path, name, nodes):
    settings = SETTINGS[name]
    ctx = _ctx(tmp_path, nodes=nodes, workers=2)
    job = mpijob_manifest(ctx, settings)
    jsonschema.validate(job, SCHEMAS["MPIJob"])
    specs = job["spec"]["mpiReplicaSpecs"]
    assert specs["Worker"]["replicas"] == nodes and specs["Launcher"]["replicas"] == 1
    assert job["spec"]["slotsPerWorker"] == 2
    # The launcher runs the stage itself: its horovodrun reads the operator's hostfile.
    launcher_cmd = specs["Launcher"]["template"]["spec"]["containers"][0]["command"]
    assert launcher_cmd == stage_argv("train", str(ctx.stage_dir / "payload.json"))
    for role, spec in specs.items():
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"{job['metadata']['name']}-{role.lower()}",
                            **spec["template"]["metadata"]},
               "spec": spec["template"]["spec"]}
        _validate_core(pod)
    gpus = specs["Worker"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpus.get("nvidia.com/gpu") == (str(settings.gpus_per_worker)
                                          if settings.gpus_per_worker else None)


@pytest.mark.parametrize("name", sorted(SETTINGS))
@pytest.mark.parametrize("launcher", ["ddp", "fsdp"])
def test_trainjob_renders_and_validates(tmp_path, name, launcher):
    settings = SETTINGS[name]
    ctx = _ctx(tmp_path, nodes=2, workers=2, launcher=launcher)
    kind, job = job_for(ctx, settings)
    assert kind.kind == "TrainJob" and job == trainjob_manifest(ctx, settings)
    jsonschema.validate(job, SCHEMAS["TrainJob"])
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 2
    assert trainer["command"] == stage_argv("train", str(ctx.stage_dir / "payload.json"))
    assert not {e["name"] for e in trainer["env"]} & {"PET_NNODES", "PET_NODE_RANK"}
    assert trainer["resourcesPerNode"] == settings.resources()


def test_job_outcome_reads_each_kind_s_final_condition(tmp_path):
    from tasks.kube import MPIJOB as MPI
    from tasks.kube import TRAINJOB as TORCH

    def job(*conditions):
        return {"status": {"conditions": [dict(type=t, status=s, reason="R", message="m")
                                          for t, s in conditions]}}

    assert job_outcome(MPI, job(("Running", "True"))) is None
    assert job_outcome(MPI, job(("Running", "False"), ("Succeeded", "True"))) == "succeeded"
    assert job_outcome(TORCH, job(("Complete", "True"))) == "succeeded"
    assert job_outcome(TORCH, job(("Succeeded", "True"))) is None  # not a TrainJob condition
    assert job_outcome(TORCH, job(("Failed", "True"))) == "failed: R: m"


def test_multi_node_needs_kubernetes_and_a_distributed_launcher():
    with pytest.raises(ValueError, match="^nodes:"):
        LifecycleConfig.from_dict(TINY | {"nodes": 2, "launcher": "single",
                                          "compute_target": "kubernetes"})
    with pytest.raises(ValueError, match="^nodes:"):
        LifecycleConfig.from_dict(TINY | {"nodes": 2})
    for launcher in ("horovod", "ddp", "fsdp"):
        LifecycleConfig.from_dict(TINY | {"nodes": 2, "launcher": launcher,
                                          "compute_target": "kubernetes"})


def test_settings_file_with_unknown_key_is_named(tmp_path, monkeypatch):
    path = tmp_path / "k8s.json"
    path.write_text(json.dumps({"namespace": "ml", "gpu": 1}))
    monkeypatch.setenv("AIGC_KUBERNETES_CONFIG", str(path))
    with pytest.raises(ValueError, match="^gpu: unknown Kubernetes setting"):
        KubernetesSettings.from_env()


def _prepared_ctx(prepared, **overrides) -> StageContext:
    return train_context(prepared, "k8s-local", dag_id="aigc_lifecycle", **{
        "compute_target": "kubernetes", "max_steps": 30} | overrides)


def test_local_runner_executes_the_rendered_pod_command(prepared):
    ctx = _prepared_ctx(prepared, launcher="horovod", workers=2)
    container = _render_pod(ctx, SETTINGS["cpu-only"])["spec"]["containers"][0]
    write_json(ctx.stage_dir / "payload.json", ctx.to_payload())
    env = os.environ | {e["name"]: e["value"] for e in container["env"]}
    subprocess.run(localize(container["command"]), env=env, check=True, timeout=600,
                   capture_output=True)
    result = json.loads((ctx.stage_dir / RESULT_FILE).read_text())
    assert result["launcher"] == "horovod" and result["workers"] == 2
    assert result["val_perplexity"] < result["untrained_val_perplexity"]


def test_local_runner_executes_the_rendered_mpijob_launcher(prepared, tmp_path):
    """The launcher's `python -m tasks train` with a two-'node' hostfile (both slots on this
    machine), as mpi-operator names it: horovodrun starts both ranks, the stage collects."""
    ctx = _prepared_ctx(prepared, launcher="horovod", workers=1, nodes=2)
    job = mpijob_manifest(ctx, SETTINGS["cpu-only"])
    container = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    write_json(ctx.stage_dir / "payload.json", ctx.to_payload())
    env = os.environ | {e["name"]: e["value"] for e in container["env"]} | {
        "OMPI_MCA_orte_default_hostfile": str(hostfile), "K_MPI_JOB_ROLE": "launcher"}
    subprocess.run(localize(container["command"]), env=env, check=True, timeout=600,
                   capture_output=True)
    ranks = sorted(p.name for p in (ctx.stage_dir / "ranks").iterdir())
    assert ranks == ["rank-0.json", "rank-1.json"]
    result = json.loads((ctx.stage_dir / RESULT_FILE).read_text())
    assert result["launcher"] == "horovod" and result["workers"] == 2


@pytest.mark.parametrize(("field", "value"), [
    ("cpu", "0"), ("memory", "-1Gi"), ("artifact_pvc", "artifacts_pvc"),
    ("gpu_resource", "gpu"), ("gpu_resource", "/gpu"), ("gpu_resource", "kubernetes.io/gpu"),
    ("node_selector", ["pool=gpu"]), ("tolerations", ["gpu"]), ("gpus_per_worker", "1"),
    ("tolerations", [{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 60}]),
    ("tolerations", [{"operator": "Equal", "value": "x"}]),
])
def test_settings_refuse_what_no_pod_should_get(field, value):
    """Beyond the server's own rules (tier 1 checks those against it): no zero CPU, claim
    names the claim itself could have, GPUs as an extended resource, typed values."""
    with pytest.raises(ValueError, match=f"^Kubernetes setting {field}"):
        KubernetesSettings(**{field: value})


def test_settings_accept_what_the_server_accepts():
    KubernetesSettings(cpu="250m", memory="1.5Gi", gpu_resource="amd.com/gpu",
                       tolerations=[{"key": "spot", "operator": "", "value": "true",
                                     "effect": "NoSchedule", "tolerationSeconds": None},
                                    {"operator": "Exists"}],
                       node_selector={"cloud.google.com/gke-spot": "true"})
    KubernetesSettings(memory="1e9", cpu="100n")


def test_the_hostfile_is_used_only_in_an_mpijob_launcher(monkeypatch):
    from tasks.kube import mpi_hostfile

    monkeypatch.setenv("OMPI_MCA_orte_default_hostfile", "/etc/openmpi/hosts")
    monkeypatch.delenv("K_MPI_JOB_ROLE", raising=False)
    assert mpi_hostfile() is None  # e.g. an HPC login node's own OpenMPI setting
    monkeypatch.setenv("K_MPI_JOB_ROLE", "launcher")
    assert mpi_hostfile() == "/etc/openmpi/hosts"


def test_only_the_kubelets_oomkilled_counts_as_out_of_memory():
    from aigc_airflow.kube import _oom_killed
    from kubernetes.client import (
        V1ContainerState,
        V1ContainerStateTerminated,
        V1ContainerStatus,
        V1Pod,
        V1PodStatus,
    )

    def ended(reason: str, code: int) -> V1Pod:
        state = V1ContainerState(terminated=V1ContainerStateTerminated(exit_code=code,
                                                                       reason=reason))
        return V1Pod(status=V1PodStatus(container_statuses=[V1ContainerStatus(
            name="base", state=state, image="i", image_id="", ready=False,
            restart_count=0)]))

    assert _oom_killed(ended("OOMKilled", 137), "base")
    assert not _oom_killed(ended("Error", 137), "base")  # a plain SIGKILL
    assert not _oom_killed(ended("OOMKilled", 137), "sidecar")
    assert not _oom_killed(V1Pod(status=None), "base")
