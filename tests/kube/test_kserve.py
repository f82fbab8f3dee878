"""KServe tier 0: the InferenceService renders and validates offline; canary moves its traffic."""

from __future__ import annotations

import copy
import json

import jsonschema
import kubernetes_validate
import pytest

from tasks.errors import BadInput
from tasks.rollout.controller import run_canary
from tasks.rollout.kserve import (
    CONTAINER,
    KServeTarget,
    render_inference_service,
    served_version,
)
from tasks.rollout.policy import Action, CanaryPolicy
from tests.kube.crds import ISVC
from tests.rollout.scripted import Traffic

K8S_VERSION = "1.33.0"
SCHEMA = ISVC.schema()
SECRET_VALUES = ("client-key-1", "client-key-2", "admin-key-xyz")
BASE = dict(name="aigc-gpt2", namespace="aigc", image="registry.local/aigc-server:0.1.0",
            model_name="aigc-gpt2", version="3", tracking_uri="http://mlflow.aigc:5000",
            secret_name="aigc-model-server")


def _render(**overrides) -> dict:
    return render_inference_service(**(BASE | overrides))


def _container(obj: dict) -> dict:
    (container,) = obj["spec"]["predictor"]["containers"]
    return container


def _env(obj: dict) -> dict[str, dict]:
    return {e["name"]: e for e in _container(obj)["env"]}


def _as_pod(obj: dict) -> dict:
    """The predictor as the core/v1 Pod its container ends up in."""
    predictor = obj["spec"]["predictor"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{obj['metadata']['name']}-predictor",
                         "namespace": obj["metadata"]["namespace"],
                         "labels": predictor["labels"], "annotations": predictor["annotations"]},
            "spec": {"containers": predictor["containers"]}}


@pytest.mark.parametrize("overrides", [
    {}, {"canary_percent": 0}, {"canary_percent": 5}, {"canary_percent": 100},
    {"gpus": 1, "cpu": "8", "memory": "32Gi"}, {"min_replicas": 0, "max_replicas": 1},
])
def test_inference_service_renders_and_validates(overrides):
    obj = _render(**overrides)
    jsonschema.validate(obj, SCHEMA)
    kubernetes_validate.validate(_as_pod(obj), K8S_VERSION, strict=True)
    container = _container(obj)
    assert container["name"] == CONTAINER
    assert container["command"] == ["python", "-m", "serving"]
    assert [p["containerPort"] for p in container["ports"]] == [8000]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8000}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8000}
    env = _env(obj)
    assert env["AIGC_SERVE_VERSION"]["value"] == "3"
    assert env["AIGC_MODEL_NAME"]["value"] == "aigc-gpt2"
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.aigc:5000"
    assert env["AIGC_SERVER_HOST"]["value"] == "0.0.0.0"
    predictor = obj["spec"]["predictor"]
    assert predictor.get("canaryTrafficPercent") == overrides.get("canary_percent")
    assert predictor["annotations"] == {"prometheus.io/scrape": "true",
                                        "prometheus.io/port": "8000",
                                        "prometheus.io/path": "/metrics"}
    # Canary splitting exists only in KServe's Knative mode.
    assert obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    served = served_version(obj)
    assert served == "3" and predictor["labels"]["aigc/model-version"] == served


def test_keys_come_from_the_secret_and_never_appear_in_the_object():
    obj = _render()
    env = _env(obj)
    for var, key in {"AIGC_API_KEYS": "api-keys", "AIGC_ADMIN_KEY": "admin-key"}.items():
        assert "value" not in env[var]
        assert env[var]["valueFrom"] == {"secretKeyRef": {"name": "aigc-model-server",
                                                          "key": key}}
    for var in ("AIGC_REDIS_URL", "AIGC_FEEDBACK_DB"):  # URLs may carry passwords
        assert "value" not in env[var]
        assert env[var]["valueFrom"]["secretKeyRef"]["optional"] is True
    text = json.dumps(obj)
    assert not any(value in text for value in SECRET_VALUES)
    with pytest.raises(BadInput, match="^tracking_uri:"):
        _render(tracking_uri="https://user:hunter2@mlflow.aigc")


@pytest.mark.parametrize("gpus", [0, 1, 4])
def test_gpu_limit_only_when_gpus_are_asked_for(gpus):
    resources = _container(_render(gpus=gpus))["resources"]
    assert resources["requests"] == resources["limits"]
    assert resources["limits"].get("nvidia.com/gpu") == (str(gpus) if gpus else None)
    assert resources["limits"]["cpu"] == "2" and resources["limits"]["memory"] == "4Gi"


@pytest.mark.parametrize(("overrides", "field"), [
    ({"name": "Aigc"}, "name"), ({"name": "9aigc"}, "name"), ({"name": "aigc_gpt2"}, "name"),
    ({"name": "a" * 64}, "name"),
    ({"name": "a" * 40, "namespace": "n" * 20}, "name"),  # host label > 63 (kserve#4807)
    ({"namespace": "Bad"}, "namespace"),
    ({"canary_percent": -1}, "canary_percent"), ({"canary_percent": 101}, "canary_percent"),
    ({"canary_percent": True}, "canary_percent"),
    ({"version": ""}, "version"), ({"version": "3 "}, "version"),
    ({"secret_name": "Bad_Secret"}, "secret_name"), ({"image": " "}, "image"),
    ({"cpu": "2 cores"}, "cpu"), ({"memory": "8GB"}, "memory"), ({"memory": "0"}, "memory"),
    ({"gpus": -1}, "gpus"), ({"min_replicas": -1}, "min_replicas"),
    ({"min_replicas": 3, "max_replicas": 2}, "max_replicas"),
])
def test_bad_arguments_name_the_field(overrides, field):
    with pytest.raises(BadInput, match=f"^{field}:"):
        _render(**overrides)


def test_schema_fragment_refuses_what_kserve_refuses():
    obj = _render(canary_percent=5)
    for path, value in [(("spec", "predictor", "canaryTrafficPercent"), 101),
                        (("spec", "predictor", "canaryTrafficPercnt"), 5),
                        (("metadata", "name"), "9aigc")]:
        bad = copy.deepcopy(obj)
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, SCHEMA)


def _merge_patch(target, patch):
    """RFC 7386 JSON merge patch, as the API server applies application/merge-patch+json."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


class FakeCustomObjects:
    """A stand-in for the cluster's CustomObjectsApi holding one InferenceService: the one
    thing that cannot run here. It applies merge patches and checks resourceVersion."""

    def __init__(self, obj: dict):
        self.obj = _merge_patch(obj, {"metadata": {"resourceVersion": "1"}})
        self.patches: list[dict] = []
        self.stale_next_patch = False

    def _check(self, kind: dict, namespace: str, name: str) -> None:
        assert kind == {"group": "serving.kserve.io", "version": "v1beta1",
                        "plural": "inferenceservices"}
        assert (namespace, name) == (self.obj["metadata"]["namespace"],
                                     self.obj["metadata"]["name"])

    def get_namespaced_custom_object(self, *, namespace, name, **kind):
        self._check(kind, namespace, name)
        return copy.deepcopy(self.obj)

    def patch_namespaced_custom_object(self, *, namespace, name, body, **kind):
        self._check(kind, namespace, name)
        assert isinstance(body, dict)  # a dict body is sent as application/merge-patch+json
        self.patches.append(body)
        if self.stale_next_patch:  # someone else wrote in between
            self.obj["metadata"]["resourceVersion"] = "999"
            self.stale_next_patch = False
        wanted = body.get("metadata", {}).get("resourceVersion")
        current = self.obj["metadata"]["resourceVersion"]
        if wanted is not None and wanted != current:
            error = RuntimeError("Conflict")
            error.status = 409
            raise error
        self.obj = _merge_patch(self.obj, body)
        self.obj["metadata"]["resourceVersion"] = str(int(current) + 1)
        return copy.deepcopy(self.obj)

    @property
    def canary(self) -> int | None:
        return self.obj["spec"]["predictor"].get("canaryTrafficPercent")


@pytest.fixture
def target():
    api = FakeCustomObjects(_render(version="3"))
    return api, KServeTarget(api, namespace="aigc", name="aigc-gpt2")


def test_canary_steps_then_promotion(target):
    api, t = target
    t.start("4", 5)
    assert (served_version(api.obj), api.canary) == ("4", 5)
    assert api.obj["spec"]["predictor"]["labels"]["aigc/model-version"] == "4"
    jsonschema.validate(api.obj, SCHEMA)
    t.set_weight("4", 25)
    assert (served_version(api.obj), api.canary) == ("4", 25)
    t.set_weight("4", 100)
    assert api.canary == 100
    t.promote("4")
    assert "canaryTrafficPercent" not in api.obj["spec"]["predictor"]
    assert served_version(api.obj) == "4"
    # Only start touches the predictor spec (a new revision); the rest move the split only.
    assert [sorted(p["spec"]["predictor"]) for p in api.patches] == [
        ["canaryTrafficPercent", "containers", "labels"], ["canaryTrafficPercent"],
        ["canaryTrafficPercent"], ["canaryTrafficPercent"]]
    # The container kept everything but the version, in the same order.
    assert _container(api.obj) == _container(_render(version="4"))


def test_rollback_sends_all_traffic_to_the_last_rolled_out_revision(target):
    api, t = target
    t.start("4", 5)
    t.rollback("4")
    assert (served_version(api.obj), api.canary) == ("4", 0)
    jsonschema.validate(api.obj, SCHEMA)
    # The next challenger starts a fresh revision beside the still rolled-out champion.
    t.start("5", 5)
    assert (served_version(api.obj), api.canary) == ("5", 5)


def test_start_is_idempotent_on_retry(target):
    api, t = target
    t.start("4", 5)
    spec = copy.deepcopy(api.obj["spec"])
    t.start("4", 5)
    assert api.obj["spec"] == spec


@pytest.mark.parametrize("call", ["set_weight", "promote", "rollback"])
def test_another_version_is_refused_and_nothing_is_patched(target, call):
    api, t = target
    t.start("4", 5)
    patched = len(api.patches)
    args = ("5", 25) if call == "set_weight" else ("5",)
    with pytest.raises(BadInput, match="^version: '5' is not the version being rolled out"):
        getattr(t, call)(*args)
    assert len(api.patches) == patched and api.canary == 5


@pytest.mark.parametrize("weight", [-1, 101])
def test_out_of_range_weight_is_refused(target, weight):
    api, t = target
    with pytest.raises(BadInput, match="^weight:"):
        t.start("4", weight)
    t.start("4", 5)
    with pytest.raises(BadInput, match="^weight:"):
        t.set_weight("4", weight)
    assert api.canary == 5


def test_start_refuses_to_overwrite_a_concurrent_change(target):
    api, t = target
    api.stale_next_patch = True
    with pytest.raises(RuntimeError, match="Conflict"):
        t.start("4", 5)
    assert served_version(api.obj) == "3"


@pytest.mark.parametrize(("error_rate", "action", "final"), [
    (0.0, Action.PROMOTE, None), (0.5, Action.ROLLBACK, 0)])
def test_the_controller_drives_the_inference_service(error_rate, action, final):
    api = FakeCustomObjects(_render(version="1"))
    kserve = KServeTarget(api, namespace="aigc", name="aigc-gpt2")
    kserve.start("2", 0)
    outcome = run_canary(target=kserve, source=Traffic(lambda: api.canary or 0, error_rate),
                         champion="1", challenger="2", policy=CanaryPolicy(min_requests=10),
                         interval_s=60, sleep=lambda s: None)
    assert outcome.action is action
    if action is Action.PROMOTE:
        kserve.promote("2")
    assert api.canary == final and served_version(api.obj) == "2"
    jsonschema.validate(api.obj, SCHEMA)
