"""The KServe side of a canary: render the model server's InferenceService and move its traffic."""

from __future__ import annotations

import copy
import re
from typing import Any, Protocol
from urllib.parse import urlsplit

from tasks import kubecheck
from tasks.errors import BadInput

GROUP = "serving.kserve.io"
API_VERSION = "v1beta1"
PLURAL = "inferenceservices"
# KServe picks the custom predictor's container by this name.
CONTAINER = "kserve-container"
PORT = 8000
VERSION_ENV = "AIGC_SERVE_VERSION"
VERSION_LABEL = "aigc/model-version"
# Average CPU use, in percent of the request, above which another replica starts.
CPU_TARGET_PERCENT = 70
# Keys inside the Kubernetes Secret named by `secret_name`; the optional ones hold URLs
# that may carry passwords, so they never appear in the object either.
SECRET_KEYS = {"AIGC_API_KEYS": "api-keys", "AIGC_ADMIN_KEY": "admin-key",
               "AIGC_USER_HASH_KEY": "user-hash-key"}
OPTIONAL_SECRET_KEYS = {"AIGC_REDIS_URL": "redis-url", "AIGC_FEEDBACK_DB": "feedback-db"}

# KServe's webhook regex for InferenceService names (a DNS-1123 label that starts with a letter).
_ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class CustomObjectsApi(Protocol):
    """The two calls of kubernetes.client.CustomObjectsApi this module makes."""

    def get_namespaced_custom_object(self, *, group: str, version: str, namespace: str,
                                     plural: str, name: str) -> dict: ...

    def patch_namespaced_custom_object(self, *, group: str, version: str, namespace: str,
                                       plural: str, name: str, body: Any) -> dict: ...


def _check_name(name: str, namespace: str) -> None:
    if not _ISVC_NAME.match(name) or len(name) > 63:
        raise BadInput(f"name: {name!r} must be a DNS-1123 label (<= 63 chars) starting with "
                       "a letter")
    kubecheck.dns_label("namespace", namespace)
    # KServe derives the predictor's host label from both; past 63 characters it fails to
    # reconcile long after the apply succeeded (kserve/kserve#4807), so refuse it here.
    host = f"{name}-predictor-{namespace}"
    if len(host) > 63:
        raise BadInput(f"name: {host!r} (name-predictor-namespace) exceeds 63 characters")


def _check_version(version: str) -> None:
    # The version also labels the pods, so it must be a valid label value.
    if not version:
        raise BadInput("version: must be a registered model version, not empty")
    kubecheck.label_value("version", version)


def _check_percent(field: str, value: int) -> None:
    # bool is an int in Python; True must not slip through as 1%.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise BadInput(f"{field}: {value!r} must be an integer in [0, 100]")


def check_server_args(*, name: str, namespace: str, image: str, model_name: str,
                       version: str, tracking_uri: str, secret_name: str,
                       canary_percent: int | None, cpu: str, memory: str, gpus: int,
                       min_replicas: int, max_replicas: int) -> None:
    _check_name(name, namespace)
    kubecheck.quantity("cpu", cpu)
    kubecheck.quantity("memory", memory)
    _check_version(version)
    kubecheck.image("image", image)
    if not model_name.strip():
        raise BadInput("model_name: must not be empty")
    if not tracking_uri.strip():
        raise BadInput("tracking_uri: must not be empty")
    if urlsplit(tracking_uri).password:
        raise BadInput("tracking_uri: carries a password; give MLflow credentials through "
                       "the Secret, not the manifest")
    kubecheck.dns_subdomain("secret_name", secret_name)
    if canary_percent is not None:
        _check_percent("canary_percent", canary_percent)
    if gpus < 0:
        raise BadInput(f"gpus: {gpus} must be >= 0")
    if min_replicas < 0:
        raise BadInput(f"min_replicas: {min_replicas} must be >= 0")
    if max_replicas < max(min_replicas, 1):
        raise BadInput(f"max_replicas: {max_replicas} must be >= 1 and >= min_replicas")


# Inside a pod only, through the AIGC_SERVER_HOST setting the rendered manifests pass (see
# server_env and the README, "Serving and canary rollout"): elsewhere it binds 127.0.0.1.
POD_BIND_HOST = "0.0.0.0"


def server_env(*, model_name: str, version: str, tracking_uri: str,
         secret_name: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        # The server binds 127.0.0.1 unless told otherwise. In a pod it must listen on the
        # pod's address for KServe's router and the kubelet's probes: the pod's own network
        # namespace is the boundary, and every request still needs an API key (README,
        # "Kubernetes").
        {"name": "AIGC_SERVER_HOST", "value": POD_BIND_HOST},
        {"name": "AIGC_SERVER_PORT", "value": str(PORT)},
        {"name": "MLFLOW_TRACKING_URI", "value": tracking_uri},
        {"name": "AIGC_MODEL_NAME", "value": model_name},
        {"name": VERSION_ENV, "value": version},
    ]
    for var, key in SECRET_KEYS.items():
        env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": secret_name,
                                                                "key": key}}})
    for var, key in OPTIONAL_SECRET_KEYS.items():
        # optional: a missing key leaves the variable unset and the server on its default.
        env.append({"name": var, "valueFrom": {"secretKeyRef": {
            "name": secret_name, "key": key, "optional": True}}})
    return env


def _resources(cpu: str, memory: str, gpus: int) -> dict[str, dict[str, str]]:
    """Requests equal limits (Guaranteed QoS), as for the training pods."""
    amount = {"cpu": cpu, "memory": memory}
    if gpus:
        amount["nvidia.com/gpu"] = str(gpus)
    return {"requests": dict(amount), "limits": dict(amount)}


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": PORT}, "periodSeconds": period,
            "failureThreshold": failures, "timeoutSeconds": 2}


def server_container(*, image: str, env: list[dict[str, Any]], cpu: str, memory: str,
                     gpus: int, name: str = CONTAINER) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "command": ["python", "-m", "serving"],
        # Knative allows one port; its name picks the protocol (HTTP/1.1).
        "ports": [{"name": "http1", "containerPort": PORT, "protocol": "TCP"}],
        "env": env,
        "resources": _resources(cpu, memory, gpus),
        # Ready only once the model is loaded, so a new revision takes no traffic before.
        "readinessProbe": _probe("/readyz", period=5, failures=3),
        # Loading a model can take minutes: a liberal liveness probe does not kill it then.
        "livenessProbe": _probe("/healthz", period=10, failures=6),
        # Knative masks most securityContext fields; these two pass on every version.
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
    }


def render_inference_service(*, name: str, namespace: str, image: str, model_name: str,
                             version: str, tracking_uri: str, secret_name: str,
                             canary_percent: int | None = None, cpu: str = "2",
                             memory: str = "4Gi", gpus: int = 0, min_replicas: int = 1,
                             max_replicas: int = 4) -> dict:
    """The InferenceService that serves exactly `version` of `model_name` from our image."""
    check_server_args(name=name, namespace=namespace, image=image, model_name=model_name,
                       version=version, tracking_uri=tracking_uri, secret_name=secret_name,
                       canary_percent=canary_percent, cpu=cpu, memory=memory, gpus=gpus,
                       min_replicas=min_replicas, max_replicas=max_replicas)
    env = server_env(model_name=model_name, version=version, tracking_uri=tracking_uri,
               secret_name=secret_name)
    predictor: dict[str, Any] = {
        "minReplicas": min_replicas,
        "maxReplicas": max_replicas,
        # Pod labels and annotations: Prometheus scrapes each pod and can tell versions apart.
        "labels": {VERSION_LABEL: version},
        "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(PORT),
                        "prometheus.io/path": "/metrics"},
        # Scale on CPU use (Knative's HPA class under Serverless, an HPA in raw mode) rather
        # than Knative's default request concurrency: a generating request holds its slot
        # for seconds, so concurrency says little about load. GPU servers: see
        # tasks/rollout/deployment.py (an HPA on the GPU-utilisation metric).
        "scaleMetric": "cpu",
        "scaleTarget": CPU_TARGET_PERCENT,
        "containers": [server_container(image=image, env=env, cpu=cpu, memory=memory,
                                        gpus=gpus)],
    }
    if canary_percent is not None:
        predictor["canaryTrafficPercent"] = canary_percent
    return {
        "apiVersion": f"{GROUP}/{API_VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": name,
                       "app.kubernetes.io/part-of": "aigc-lifecycle"},
            "annotations": {
                # Canary traffic splitting needs Knative revisions; newer KServe defaults to
                # the raw (Standard) mode, which has none. "Serverless" is the name every
                # KServe release accepts (newer ones map it to "Knative").
                "serving.kserve.io/deploymentMode": "Serverless",
                "aigc/model-name": model_name,
            },
        },
        "spec": {"predictor": predictor},
    }


def served_version(obj: dict) -> str | None:
    """The version the latest revision serves: its spec's AIGC_SERVE_VERSION."""
    for container in obj.get("spec", {}).get("predictor", {}).get("containers", []):
        if container.get("name") == CONTAINER:
            for var in container.get("env", []):
                if var.get("name") == VERSION_ENV:
                    return var.get("value")
    return None


def _with_version(containers: list[dict], version: str) -> list[dict]:
    """A copy of the predictor's containers with the serving container pinned to `version`."""
    out = copy.deepcopy(containers)
    for container in out:
        if container.get("name") != CONTAINER:
            continue
        pinned = {"name": VERSION_ENV, "value": version}
        env = container.setdefault("env", [])
        # In place, so a retried start sends exactly the spec it sent before (no new revision).
        at = next((i for i, v in enumerate(env) if v.get("name") == VERSION_ENV), None)
        if at is None:
            env.append(pinned)
        else:
            env[at] = pinned
        return out
    raise BadInput(f"spec.predictor.containers: no container named {CONTAINER!r}")


class KServeTarget:
    """A canary Target backed by one InferenceService.

    KServe's semantics: changing the predictor spec creates a new revision, which gets
    `canaryTrafficPercent` of the traffic while the last rolled-out revision keeps the rest.
    `start` makes that revision; `set_weight` only moves the split; `rollback` sends all
    traffic back to the last rolled-out revision (0); `promote` drops the field, so the new
    revision takes 100% and becomes the rolled-out one.
    """

    def __init__(self, api: CustomObjectsApi, *, namespace: str, name: str) -> None:
        _check_name(name, namespace)
        self.api, self.namespace, self.name = api, namespace, name

    def _ref(self) -> dict[str, str]:
        return {"group": GROUP, "version": API_VERSION, "namespace": self.namespace,
                "plural": PLURAL, "name": self.name}

    def _get(self) -> dict:
        return self.api.get_namespaced_custom_object(**self._ref())

    def _patch(self, body: dict) -> dict:
        return self.api.patch_namespaced_custom_object(**self._ref(), body=body)

    def _live_for(self, version: str) -> dict:
        """The live object, refusing a version that its latest revision does not serve."""
        _check_version(version)
        live = self._get()
        serving = served_version(live)
        if serving != version:
            raise BadInput(f"version: {version!r} is not the version being rolled out "
                           f"(the latest revision of {self.name} serves {serving!r})")
        return live

    def start(self, version: str, weight: int) -> None:
        """Roll out `version` as a new revision that takes `weight` percent of the traffic."""
        _check_version(version)
        _check_percent("weight", weight)
        live = self._get()
        predictor = live.get("spec", {}).get("predictor", {})
        # A merge patch replaces lists whole, so the containers go back in full, and
        # resourceVersion makes the API server refuse (409) if someone changed them meanwhile.
        body: dict[str, Any] = {"spec": {"predictor": {
            "canaryTrafficPercent": weight,
            "labels": {VERSION_LABEL: version},
            "containers": _with_version(predictor.get("containers", []), version),
        }}}
        resource_version = live.get("metadata", {}).get("resourceVersion")
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        self._patch(body)

    def set_weight(self, version: str, weight: int) -> None:
        """Move the split only: `weight` percent to the revision serving `version`."""
        _check_percent("weight", weight)
        self._live_for(version)
        self._patch({"spec": {"predictor": {"canaryTrafficPercent": weight}}})

    def promote(self, version: str) -> None:
        """The new revision takes all traffic and becomes the last rolled-out one."""
        self._live_for(version)
        # null removes the field in a JSON merge patch (RFC 7386).
        self._patch({"spec": {"predictor": {"canaryTrafficPercent": None}}})

    def rollback(self, version: str) -> None:
        """All traffic back to the last rolled-out revision; the new one keeps 0%."""
        self._live_for(version)
        self._patch({"spec": {"predictor": {"canaryTrafficPercent": 0}}})
