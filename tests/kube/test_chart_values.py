"""The Airflow chart values (docker/k8s/airflow/values.yaml) use only the official chart's
documented keys, with their documented types, and point at what the project builds."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from tasks.kube import KubernetesSettings
from tasks.settings import PROJECT_ROOT

VALUES = PROJECT_ROOT / "docker" / "k8s" / "airflow" / "values.yaml"
# The chart's values.schema.json (apache/airflow chart/, commit 002e5532, chart 1.19 line for
# Airflow 3): every key this file sets, with its JSON type; "free" marks objects whose content
# the chart passes through (Airflow config sections, env entries, volume specs). Objects
# the schema closes with additionalProperties: false refuse any other key at `helm install`.
DOCUMENTED: dict[str, str | tuple[str, ...]] = {
    "defaultAirflowRepository": "string", "defaultAirflowTag": "string",
    "airflowVersion": "string",
    "images": "object", "images.airflow": "object",
    "images.airflow.repository": ("string", "null"), "images.airflow.tag": ("string", "null"),
    "images.airflow.pullPolicy": "string",
    "executor": "string", "allowPodLaunching": "boolean",
    "rbac": "object", "rbac.create": "boolean",
    "postgresql": "object", "postgresql.enabled": "boolean",
    "data": "object", "data.metadataSecretName": ("string", "null"),
    "redis": "object", "redis.enabled": "boolean",
    "fernetKeySecretName": ("string", "null"), "apiSecretKeySecretName": ("string", "null"),
    "jwtSecretName": ("string", "null"),
    "dags": "object", "dags.persistence": "object", "dags.persistence.enabled": "boolean",
    "dags.gitSync": "object", "dags.gitSync.enabled": "boolean",
    "dags.gitSync.repo": "string", "dags.gitSync.branch": "string",
    "dags.gitSync.subPath": "string",
    "logs": "object", "logs.persistence": "object", "logs.persistence.enabled": "boolean",
    "config": "free", "env": "free", "secret": "free",
    "triggerer": "object", "triggerer.enabled": "boolean", "triggerer.replicas": "integer",
    "scheduler": "object", "scheduler.replicas": "integer",
    "apiServer": "object", "apiServer.replicas": "integer",
    "workers": "object", "workers.replicas": "integer", "workers.persistence": "object",
    "workers.persistence.enabled": "boolean",
    "workers.extraVolumes": "free", "workers.extraVolumeMounts": "free",
}
PULL_POLICIES = ("Always", "Never", "IfNotPresent")
# The schema's executor pattern: one or more comma-separated *Executor class names.
EXECUTOR = re.compile(r"^(([a-zA-Z_][a-zA-Z0-9_]*.)*[A-Z][a-zA-Z0-9]+Executor)"
                      r"(,(([a-zA-Z_][a-zA-Z0-9_]*.)*[A-Z][a-zA-Z0-9]+Executor))*$")
JSON_TYPES = {"string": str, "boolean": bool, "integer": int, "object": dict, "null": type(None)}


def _walk(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        out.append((path, value))
        if isinstance(value, dict) and DOCUMENTED.get(path) != "free":
            out += _walk(value, f"{path}.")
    return out


def test_every_key_is_documented_with_its_type():
    values = yaml.safe_load(VALUES.read_text())
    for path, value in _walk(values):
        assert path in DOCUMENTED, f"{path}: not a documented key of the chart"
        kinds = DOCUMENTED[path]
        if kinds == "free":
            continue
        kinds = (kinds,) if isinstance(kinds, str) else kinds
        assert any(type(value) is JSON_TYPES[k] for k in kinds), f"{path}: {value!r}"
    assert EXECUTOR.match(values["executor"])
    assert values["images"]["airflow"]["pullPolicy"] in PULL_POLICIES


def test_config_values_are_scalars_and_env_entries_name_value_pairs():
    values = yaml.safe_load(VALUES.read_text())
    for section, options in values["config"].items():
        for key, value in options.items():
            assert isinstance(value, str | int | float | bool), f"config.{section}.{key}"
    for entry in values["env"]:
        assert set(entry) == {"name", "value"} and isinstance(entry["value"], str), entry
    for entry in values["secret"]:
        assert {"envName", "secretName"} <= set(entry) <= {"envName", "secretName",
                                                           "secretKey"}, entry


def test_the_values_run_the_project_s_image_and_mount_the_artifacts_where_pods_do():
    values = yaml.safe_load(VALUES.read_text())
    dockerfile = (PROJECT_ROOT / "docker" / "airflow" / "Dockerfile").read_text()
    assert f"ARG AIRFLOW_VERSION={values['airflowVersion']}" in dockerfile
    env = {e["name"]: e["value"] for e in values["env"]}
    [mount] = values["workers"]["extraVolumeMounts"]
    assert mount["mountPath"] == env["AIGC_ARTIFACT_ROOT"]
    assert "AIGC_ARTIFACT_ROOT=/mnt/artifacts" in dockerfile
    settings = KubernetesSettings(**json.loads(
        (PROJECT_ROOT / "docker" / "k8s" / "airflow" / "kubernetes.json").read_text()))
    [volume] = values["workers"]["extraVolumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == settings.artifact_pvc
    assert values["triggerer"]["enabled"] and settings.deferrable
