"""The project's schema fragments of the Kubeflow and KServe resources, as used offline (tier 0,
jsonschema) and as CustomResourceDefinitions registered in the real API server (tier 1).

One source per kind: the fragment lists every field the project sends with its upstream type,
enum and bounds. For a CRD it becomes a structural schema: unknown fields are then pruned by
the server, so a misspelled field shows up as a difference when the object is read back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import kube as jobs
from tasks.rollout import kserve

HERE = Path(__file__).parent


@dataclass(frozen=True)
class Kind:
    kind: str
    group: str
    version: str
    plural: str
    fragment: str

    def schema(self) -> dict[str, Any]:
        return json.loads((HERE / self.fragment).read_text())

    @property
    def api(self) -> dict[str, str]:
        return {"group": self.group, "version": self.version, "plural": self.plural}


def _job(job: jobs.JobKind, fragment: str) -> Kind:
    return Kind(job.kind, job.group, job.version, job.plural, fragment)


MPIJOB = _job(jobs.MPIJOB, "mpijob_v2beta1.schema.json")
TRAINJOB = _job(jobs.TRAINJOB, "trainjob_v1alpha1.schema.json")
ISVC = Kind("InferenceService", kserve.GROUP, kserve.API_VERSION, kserve.PLURAL,
            "inferenceservice_v1beta1.schema.json")
KINDS = (MPIJOB, TRAINJOB, ISVC)
_DROP = {"$comment", "$schema", "$defs", "not", "const", "anyOf", "additionalProperties"}


def _resolve(node: dict, defs: dict) -> dict:
    while "$ref" in node:
        node = {**defs[node["$ref"].rsplit("/", 1)[-1]],
                **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def structural(node: dict, defs: dict) -> dict:
    """A JSON-schema fragment as an apiextensions/v1 structural schema: refs inlined, `const`
    as a one-value enum, integer-or-string as x-kubernetes-int-or-string, open objects and
    untyped arrays preserving unknown fields (checked elsewhere, as core/v1 pods)."""
    node = _resolve(node, defs)
    out = {k: v for k, v in node.items() if k not in _DROP}
    if "const" in node:
        out["enum"] = [node["const"]]
    if "anyOf" in node:  # integer or string: quantities, ports
        out.pop("pattern", None)
        out["x-kubernetes-int-or-string"] = True
        return out
    if "enum" in out and "type" not in out:
        out["type"] = "integer" if all(isinstance(v, int) for v in out["enum"]) else "string"
    if "properties" in node:
        out["properties"] = {k: structural(v, defs) for k, v in node["properties"].items()}
    elif isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = structural(node["additionalProperties"], defs)
    elif out.get("type") == "object":
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("type") == "array":
        out["items"] = (structural(node["items"], defs) if "items" in node
                        else {"x-kubernetes-preserve-unknown-fields": True})
    return out


def crd(kind: Kind) -> dict[str, Any]:
    fragment = kind.schema()
    schema = structural(fragment, fragment.get("$defs", {}))
    # The server owns metadata's schema; a CRD may not restate it.
    schema["properties"]["metadata"] = {"type": "object"}
    schema["properties"]["status"] = {"type": "object",
                                      "x-kubernetes-preserve-unknown-fields": True}
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{kind.group}"},
        "spec": {
            "group": kind.group, "scope": "Namespaced",
            "names": {"kind": kind.kind, "plural": kind.plural, "singular": kind.kind.lower(),
                      "listKind": f"{kind.kind}List"},
            "versions": [{"name": kind.version, "served": True, "storage": True,
                          "schema": {"openAPIV3Schema": schema},
                          "subresources": {"status": {}}}],
        },
    }
