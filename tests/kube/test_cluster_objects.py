"""Tier 1: every object the project renders, sent to a real kube-apiserver (1.20).

Accepted is not enough: a 1.20 server silently prunes fields its schemas do not know (and has
no CEL rules), so each object is read back and must hold everything that was sent — that is
what catches a misspelled field.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest
import yaml

from tasks.config import LifecycleConfig
from tasks.errors import BadInput
from tasks.kube import KubernetesSettings, job_for, label_value
from tasks.rollout.deployment import render_server_objects
from tasks.rollout.kserve import KServeTarget, render_inference_service
from tasks.stage import StageContext
from tests.conftest import TINY, isolated_settings
from tests.kube.cluster import wait_for
from tests.kube.crds import ISVC, MPIJOB, TRAINJOB
from tests.kube.test_render import SETTINGS

NAMESPACE = "aigc"
UNICODE_RUN = "manual__2026-12-04T10:00:00+00:00_训练-réessai"
SERVER = dict(name="aigc-gpt2", namespace=NAMESPACE, image="registry.local/aigc-server:0.1.0",
              model_name="aigc-gpt2", version="3", tracking_uri="http://mlflow.aigc:5000",
              secret_name="aigc-model-server")


def contains(sent: Any, stored: Any, path: str = "") -> None:
    """Everything sent is stored as sent (the server may add defaults, never drop)."""
    if isinstance(sent, dict):
        assert isinstance(stored, dict), f"{path}: {stored!r}"
        for key, value in sent.items():
            if (value is False or value in ({}, [])) and key not in stored:
                continue  # empty maps and lists, and false, are stored as absent
            assert key in stored, f"{path}.{key}: dropped by the server (unknown field?)"
            contains(value, stored[key], f"{path}.{key}")
    elif isinstance(sent, list):
        assert isinstance(stored, list) and len(stored) == len(sent), f"{path}: {stored!r}"
        for i, (a, b) in enumerate(zip(sent, stored, strict=True)):
            contains(a, b, f"{path}[{i}]")
    else:
        assert sent == stored, f"{path}: sent {sent!r}, stored {stored!r}"


def _ctx(tmp_path, run_id: str = "manual__2026-12-04T10:00:00+00:00", **conf) -> StageContext:
    return StageContext(stage="train", dag_id="aigc_lifecycle", run_id=run_id,
                        config=LifecycleConfig.from_dict(TINY | {"compute_target": "kubernetes"}
                                                         | conf),
                        settings=isolated_settings(tmp_path))


def _sanitized(obj: Any) -> dict:
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


def _create_pod(cluster, pod: dict, *, dry_run: bool = True) -> dict:
    made = cluster.core.create_namespaced_pod(NAMESPACE, pod,
                                              dry_run="All" if dry_run else None)
    return _sanitized(made)


def _stage_pod(settings: KubernetesSettings, ctx: StageContext) -> dict:
    from aigc_airflow.kube import StagePodOperator

    return _sanitized(StagePodOperator(stage=ctx.stage, settings=settings).render(ctx))


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_stage_pods_are_accepted_and_stored_as_sent(cluster, tmp_path, name):
    pod = _stage_pod(SETTINGS[name], _ctx(tmp_path, run_id=UNICODE_RUN))
    contains(pod, _create_pod(cluster, pod))


def _template_pod(job: dict, template: dict, role: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{job['metadata']['name']}-{role}",
                         "labels": template.get("metadata", {}).get("labels", {})},
            "spec": template["spec"]}


@pytest.mark.parametrize("name", sorted(SETTINGS))
@pytest.mark.parametrize("launcher", ["horovod", "ddp", "fsdp"])
def test_jobs_are_accepted_stored_as_sent_and_their_pods_too(cluster, tmp_path, name, launcher):
    settings = SETTINGS[name]
    kind, job = job_for(_ctx(tmp_path, launcher=launcher, nodes=2, workers=2), settings)
    crd = MPIJOB if kind.kind == "MPIJob" else TRAINJOB
    stored = cluster.custom.create_namespaced_custom_object(
        namespace=NAMESPACE, body=job, dry_run="All", **crd.api)
    contains(job, stored)
    if kind.kind == "MPIJob":
        pods = [_template_pod(job, spec["template"], role.lower())
                for role, spec in job["spec"]["mpiReplicaSpecs"].items()]
    else:  # the pod the torch runtime makes: the trainer's container, the patch's placement
        trainer = job["spec"]["trainer"]
        patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
        template = copy.deepcopy(patch["replicatedJobs"][0]["template"]["spec"]["template"])
        [node] = template["spec"]["containers"]
        node |= {"image": trainer["image"], "command": trainer["command"],
                 "env": trainer["env"], "resources": trainer["resourcesPerNode"]}
        template["spec"]["restartPolicy"] = "Never"
        pods = [_template_pod(job, template, "node-0-0")]
    for pod in pods:
        contains(pod, _create_pod(cluster, pod))


def test_a_misspelled_job_field_is_caught_by_reading_it_back(cluster, tmp_path):
    _, job = job_for(_ctx(tmp_path, launcher="horovod", nodes=2), KubernetesSettings())
    job["spec"]["slotPerWorker"] = 2  # sic
    stored = cluster.custom.create_namespaced_custom_object(
        namespace=NAMESPACE, body=job, dry_run="All", **MPIJOB.api)
    with pytest.raises(AssertionError, match="slotPerWorker: dropped"):
        contains(job, stored)


@pytest.mark.parametrize("overrides", [{}, {"canary_percent": 5}, {"gpus": 1, "cpu": "8"}])
def test_the_inference_service_is_accepted_and_stored_as_sent(cluster, overrides):
    isvc = render_inference_service(**(SERVER | overrides))
    stored = cluster.custom.create_namespaced_custom_object(
        namespace=NAMESPACE, body=isvc, dry_run="All", **ISVC.api)
    contains(isvc, stored)


def test_the_canary_patches_are_accepted_and_read_back(cluster):
    isvc = render_inference_service(**(SERVER | {"name": "aigc-canary"}))
    cluster.custom.create_namespaced_custom_object(namespace=NAMESPACE, body=isvc, **ISVC.api)
    target = KServeTarget(cluster.custom, namespace=NAMESPACE, name="aigc-canary")

    def predictor() -> dict:
        return cluster.custom.get_namespaced_custom_object(
            namespace=NAMESPACE, name="aigc-canary", **ISVC.api)["spec"]["predictor"]

    target.start("4", 5)
    assert predictor()["canaryTrafficPercent"] == 5
    assert predictor()["labels"]["aigc/model-version"] == "4"
    target.set_weight("4", 25)
    assert predictor()["canaryTrafficPercent"] == 25
    target.rollback("4")
    assert predictor()["canaryTrafficPercent"] == 0
    target.set_weight("4", 50)
    target.promote("4")
    assert "canaryTrafficPercent" not in predictor()
    with pytest.raises(BadInput, match="^version:"):
        target.set_weight("3", 10)


def _dry_run_create(cluster, obj: dict) -> dict:
    """POST any namespaced object by its apiVersion (the client no longer ships the 1.20-era
    autoscaling/v2beta2 and policy/v1beta1 classes)."""
    group = "api" if "/" not in obj["apiVersion"] else "apis"
    plural = obj["kind"].lower() + ("es" if obj["kind"].endswith("s") else "s")
    plural = plural.replace("policys", "policies")
    path = f"/{group}/{obj['apiVersion']}/namespaces/{NAMESPACE}/{plural}"
    return cluster.api.call_api(path, "POST", body=obj, query_params=[("dryRun", "All")],
                                header_params={"Content-Type": "application/json"},
                                response_types_map={201: "object", 200: "object"},
                                auth_settings=["BearerToken"], _return_http_data_only=True)


@pytest.mark.parametrize("gpus", [0, 1])
def test_the_server_deployment_autoscaler_and_budget_are_accepted(cluster, gpus):
    objects = render_server_objects(**SERVER, gpus=gpus, api="1.20")
    for obj in objects:
        contains(obj, _dry_run_create(cluster, obj))
    current = render_server_objects(**SERVER, gpus=gpus)
    assert [o["apiVersion"] for o in current] == ["apps/v1", "autoscaling/v2", "policy/v1"]
    assert [o["spec"] for o in current] == [o["spec"] for o in objects]


def test_the_rbac_for_training_jobs_is_accepted_and_grants_what_the_task_calls(cluster):

    from tasks.kube import MPIJOB as MPI
    from tasks.kube import TRAINJOB as TORCH
    from tasks.settings import PROJECT_ROOT

    objects = list(yaml.safe_load_all(
        (PROJECT_ROOT / "docker/k8s/airflow/rbac.yaml").read_text()))
    for obj in objects:
        contains(obj, _dry_run_create(cluster, obj))
    [role] = [o for o in objects if o["kind"] == "Role"]
    granted = {(g, r): set(rule["verbs"]) for rule in role["rules"]
               for g in rule["apiGroups"] for r in rule["resources"]}
    for kind in (MPI, TORCH):  # create, read (watch), delete on kill and on replace
        assert {"create", "get", "delete"} <= granted[(kind.group, kind.plural)]
    assert "list" in granted[("", "pods")]  # a replaced job's pods are awaited
    settings = KubernetesSettings(**json.loads(
        (PROJECT_ROOT / "docker/k8s/airflow/kubernetes.json").read_text()))
    assert {"ServiceAccount": settings.service_account}.items() <= {
        o["kind"]: o["metadata"]["name"] for o in objects}.items()


# Each bad cluster setting: refused when the settings load (naming it), and refused by the
# real server in the pod it would have produced — the offline check is no stricter or looser.
BAD_SETTINGS = [
    ("memory", "8GB"), ("cpu", "2 cores"),
    ("node_selector", {"pool": "gpu nodes"}), ("node_selector", {"bad key!": "x"}),
    ("tolerations", [{"key": "gpu", "operator": "Exists", "effect": "NoSchedul"}]),
    ("tolerations", [{"key": "gpu", "operator": "Exists", "value": "x"}]),
    ("image_pull_policy", "always"), ("namespace", "ML-Team"),
    ("service_account", "Trainer_SA"), ("gpu_resource", "nvidia gpu"),
]


@pytest.mark.parametrize(("field", "value"), BAD_SETTINGS)
def test_what_the_settings_refuse_the_server_refuses(cluster, tmp_path, field, value):
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(BadInput, match=f"^Kubernetes setting {field}"):
        KubernetesSettings(**{field: value})
    unchecked = KubernetesSettings(gpus_per_worker=1)
    object.__setattr__(unchecked, field, value)  # past the check, as before it existed
    pod = _stage_pod(unchecked, _ctx(tmp_path))
    namespace = pod["metadata"]["namespace"]
    with pytest.raises(ApiException) as refused:
        cluster.core.create_namespaced_pod(namespace, pod, dry_run="All")
    assert refused.value.status in (400, 404, 422), refused.value.body


def test_a_gpu_request_different_from_its_limit_is_refused_by_the_server(cluster, tmp_path):
    """Why the settings have one GPU number for requests and limits."""
    from kubernetes.client.exceptions import ApiException

    pod = _stage_pod(KubernetesSettings(gpus_per_worker=2), _ctx(tmp_path))
    pod["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] = "1"
    with pytest.raises(ApiException) as refused:
        cluster.core.create_namespaced_pod(NAMESPACE, pod, dry_run="All")
    assert refused.value.status == 422 and "nvidia.com/gpu" in refused.value.body


def test_any_run_id_becomes_a_label_value_the_server_accepts(cluster):
    for run_id in (UNICODE_RUN, "训练", "x" * 300, "scheduled__2026-11-23T00:00:00+00:00"):
        value = label_value(run_id)
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"generateName": "label-", "labels": {"aigc/run-id": value}},
               "spec": {"containers": [{"name": "c", "image": "x"}]}}
        assert _create_pod(cluster, pod)["metadata"]["labels"]["aigc/run-id"] == value
    assert label_value("a") != label_value("b") and label_value("训练") != label_value("推理")


@pytest.fixture
def connection(cluster, monkeypatch):
    """Airflow's kubernetes_default connection to the tier-1 server, for operators used
    outside a task."""
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps({
        "conn_type": "kubernetes",
        "extra": {"kube_config_path": str(cluster.folder / "direct.yaml")}}))


def test_on_kill_deletes_the_pod(cluster, connection, tmp_path):
    from aigc_airflow.kube import StagePodOperator

    namespace = cluster.namespace("aigc-kill-pod")
    cluster.node.hold.add(namespace)
    settings = KubernetesSettings(namespace=namespace)
    op = StagePodOperator(stage="train", settings=settings)
    pod = op.render(_ctx(tmp_path))
    op.pod = cluster.core.create_namespaced_pod(namespace, pod)
    name = op.pod.metadata.name
    wait_for(lambda: cluster.core.read_namespaced_pod(name, namespace).status.phase == "Running",
             what="the pod running")
    op.on_kill()
    wait_for(lambda: not cluster.core.list_namespaced_pod(namespace).items, timeout=30,
             what="the pod deleted")


@pytest.mark.parametrize("launcher", ["horovod", "ddp"])
def test_on_kill_deletes_the_job(cluster, connection, tmp_path, launcher):
    from aigc_airflow.kube import StagePodOperator

    from tasks.kube import MPIJOB as MPI

    kind, job = job_for(_ctx(tmp_path, launcher=launcher, nodes=2), KubernetesSettings())
    cluster.custom.create_namespaced_custom_object(namespace=NAMESPACE, body=job, **kind.api)
    op = StagePodOperator(stage="train", settings=KubernetesSettings())
    op._job = (kind, job["metadata"]["name"])
    op.on_kill()
    items = cluster.custom.list_namespaced_custom_object(namespace=NAMESPACE, **kind.api)
    assert job["metadata"]["name"] not in [j["metadata"]["name"] for j in items["items"]]
    assert (kind is MPI) == (launcher == "horovod")


def test_a_failed_job_fails_the_task_with_its_reason(cluster, connection, tmp_path):
    from aigc_airflow.kube import JobTrigger, StagePodOperator, _first_event
    from airflow.sdk.exceptions import AirflowException

    kind, job = job_for(_ctx(tmp_path, launcher="horovod", nodes=2, seed=7),
                        KubernetesSettings())
    name = job["metadata"]["name"]
    cluster.custom.create_namespaced_custom_object(namespace=NAMESPACE, body=job, **kind.api)
    cluster.custom.patch_namespaced_custom_object_status(
        namespace=NAMESPACE, name=name, **kind.api, body={"status": {"conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
             "message": "launcher OOMKilled"}]}})
    trigger = JobTrigger(kind=kind.kind, name=name, namespace=NAMESPACE,
                         kubernetes_conn_id="kubernetes_default", poll_seconds=0.2)
    event = asyncio.run(_first_event(trigger))
    assert event["status"] == "failed"
    op = StagePodOperator(stage="train", settings=KubernetesSettings())
    with pytest.raises(AirflowException, match="BackoffLimitExceeded: launcher OOMKilled"):
        op.job_reentry({}, event)
    asyncio.run(trigger.on_kill())  # a deferred task marked failed: the job goes
    items = cluster.custom.list_namespaced_custom_object(namespace=NAMESPACE, **kind.api)
    assert name not in [j["metadata"]["name"] for j in items["items"]]


def test_a_stage_refusing_its_input_fails_the_task_without_retries(cluster, connection,
                                                                   tmp_path):
    """A pod whose stage exits with EXIT_BAD_INPUT fails its task for good, as locally."""
    from aigc_airflow.kube import StagePodOperator
    from airflow.sdk.exceptions import AirflowFailException

    from tasks.errors import EXIT_BAD_INPUT

    namespace = cluster.namespace("aigc-bad-input")
    op = StagePodOperator(stage="train", settings=KubernetesSettings(namespace=namespace))
    pod = _sanitized(op.render(_ctx(tmp_path)))
    pod["spec"]["containers"][0]["command"] = ["python", "-c",
                                               f"import sys; sys.exit({EXIT_BAD_INPUT})"]
    made = cluster.core.create_namespaced_pod(namespace, pod)
    done = wait_for(lambda: (p := cluster.core.read_namespaced_pod(
        made.metadata.name, namespace)).status.phase == "Failed" and p, what="the pod failing")
    with pytest.raises(AirflowFailException, match="refused its input"):
        op.cleanup(done, done)
