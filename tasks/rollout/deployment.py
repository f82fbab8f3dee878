"""The model server on plain Kubernetes (no KServe): a Deployment with probes, an autoscaler on
CPU and GPU use, and a PodDisruptionBudget — the same container as the InferenceService's.

API versions: today's autoscaling/v2 and policy/v1; a 1.20 server serves the same objects as
autoscaling/v2beta2 (v2 arrived in 1.23) and policy/v1beta1 (v1 in 1.21), `api="1.20"`.
"""

from __future__ import annotations

from typing import Any

from tasks.rollout.kserve import (
    CPU_TARGET_PERCENT,
    VERSION_LABEL,
    check_server_args,
    server_container,
    server_env,
)

API_VERSIONS = {"current": {"hpa": "autoscaling/v2", "pdb": "policy/v1"},
                "1.20": {"hpa": "autoscaling/v2beta2", "pdb": "policy/v1beta1"}}
# NVIDIA DCGM exporter's utilisation gauge, served to the HPA as a pods metric by
# prometheus-adapter (README, "Kubernetes").
GPU_METRIC = "DCGM_FI_DEV_GPU_UTIL"
GPU_TARGET_PERCENT = 70
# Long enough to finish the generations in flight after SIGTERM (the server drains).
DRAIN_SECONDS = 60


def render_server_objects(*, name: str, namespace: str, image: str, model_name: str,
                          version: str, tracking_uri: str, secret_name: str, cpu: str = "2",
                          memory: str = "4Gi", gpus: int = 0, min_replicas: int = 2,
                          max_replicas: int = 8, api: str = "current") -> list[dict[str, Any]]:
    """Deployment, HorizontalPodAutoscaler and PodDisruptionBudget serving `version`."""
    check_server_args(name=name, namespace=namespace, image=image, model_name=model_name,
                      version=version, tracking_uri=tracking_uri, secret_name=secret_name,
                      canary_percent=None, cpu=cpu, memory=memory, gpus=gpus,
                      min_replicas=min_replicas, max_replicas=max_replicas)
    versions = API_VERSIONS[api]
    selector = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "aigc-lifecycle"}
    meta = {"name": name, "namespace": namespace, "labels": dict(selector)}
    env = server_env(model_name=model_name, version=version, tracking_uri=tracking_uri,
                     secret_name=secret_name)
    # The server's own drain ends before the kubelet's grace period would kill it.
    env.append({"name": "AIGC_DRAIN_TIMEOUT_S", "value": str(DRAIN_SECONDS - 5)})
    container = server_container(image=image, env=env, cpu=cpu, memory=memory, gpus=gpus,
                                 name="server")
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {
            "replicas": max(min_replicas, 1),
            "selector": {"matchLabels": selector},
            # A new pod takes traffic only once ready; none is taken away before.
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": {**selector, VERSION_LABEL: version}},
                "spec": {"containers": [container],
                         "terminationGracePeriodSeconds": DRAIN_SECONDS},
            },
        },
    }
    cpu_metric = {"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization",
                                  "averageUtilization": CPU_TARGET_PERCENT}}}
    # The HPA scales to the highest of its metrics' proposals; the order is only what the
    # servers return (1.20 stores CPU apart and lists it last).
    metrics: list[dict[str, Any]] = [cpu_metric]
    if gpus:
        metrics.insert(0, {"type": "Pods", "pods": {
            "metric": {"name": GPU_METRIC},
            "target": {"type": "AverageValue", "averageValue": str(GPU_TARGET_PERCENT)}}})
    autoscaler = {
        "apiVersion": versions["hpa"], "kind": "HorizontalPodAutoscaler", "metadata": meta,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": max(min_replicas, 1), "maxReplicas": max_replicas,
            "metrics": metrics,
            # Scale down slowly: a model takes minutes to load again.
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}},
        },
    }
    budget = {
        "apiVersion": versions["pdb"], "kind": "PodDisruptionBudget", "metadata": meta,
        # Node drains and spot reclaims take one server at a time.
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
    }
    return [deployment, autoscaler, budget]
