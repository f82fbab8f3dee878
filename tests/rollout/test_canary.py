"""The canary stage against a real server it starts on loopback, under synthetic load:
a healthy challenger is promoted, a broken or slow one is rolled back."""

from __future__ import annotations

import json
import uuid

import mlflow
import pytest

from tasks.cli import run_stage
from tasks.config import LifecycleConfig
from tasks.registry.register import alias_version
from tasks.stage import StageContext
from tests.serving.fixtures import SERVE

CANARY = SERVE | {"canary_steps": [20, 50, 100], "canary_interval_s": 3.0,
                  "canary_min_requests": 10, "canary_max_holds": 2, "canary_concurrency": 4}


def _run(registry, stage: str, inputs: dict, run_id: str) -> dict:
    ctx = StageContext(stage=stage, dag_id="aigc_lifecycle", run_id=run_id, inputs=inputs,
                       config=LifecycleConfig.from_dict(CANARY), settings=registry.settings)
    return run_stage(ctx)


def _canary_then_promote(registry, role: str) -> tuple[dict, dict]:
    versions = registry.versions
    registry.point(versions["champion"], versions[role])
    evaluated = {"model_name": registry.name, "challenger_version": versions[role],
                 "champion_version": versions["champion"],
                 "decision": {"promote": True, "reasons": ["offline gate passed"]}}
    run_id = f"canary-{role}-{uuid.uuid4().hex[:6]}"
    canary = _run(registry, "canary", {"evaluate": evaluated, "preprocess": registry.prep},
                  run_id)
    promoted = _run(registry, "promote", {"evaluate": evaluated, "canary": canary}, run_id)
    return canary, promoted


def _record(registry, version: str) -> dict:
    client = mlflow.MlflowClient(registry.settings.tracking_uri)
    return json.loads(client.get_model_version(registry.name, version).tags["aigc.canary"])


@pytest.fixture
def restore_aliases(registry):
    yield
    registry.point(registry.versions["champion"], registry.versions["healthy"])


def test_a_healthy_challenger_walks_every_step_and_becomes_champion(registry,
                                                                    restore_aliases):
    canary, promoted = _canary_then_promote(registry, "healthy")
    healthy = registry.versions["healthy"]
    assert canary["decision"] == "promote", canary["history"]
    record = _record(registry, healthy)
    passed = [s["weight"] for s in record["steps"] if s["action"] in ("advance", "promote")]
    assert passed == [20, 50, 100]
    assert all(s["challenger"]["requests"] >= 10 for s in record["steps"]
               if s["action"] != "hold")
    assert promoted["decision"] == "promoted"
    client = mlflow.MlflowClient(registry.settings.tracking_uri)
    assert alias_version(client, registry.name, "champion") == healthy


@pytest.mark.parametrize(("role", "rule"), [("broken", "FAIL error rate"), ("slow", "FAIL P99")])
def test_a_bad_challenger_is_rolled_back_and_the_champion_stays(registry, restore_aliases,
                                                                 role, rule):
    canary, promoted = _canary_then_promote(registry, role)
    assert canary["decision"] == "rollback", canary["history"]
    record = _record(registry, registry.versions[role])
    assert len(record["steps"]) <= 2  # rolled back within two analysis intervals
    assert any(r.startswith(rule) for r in record["steps"][-1]["reasons"])
    for step in record["steps"]:
        served = step["challenger"]["requests"]
        total = served + step["champion"]["requests"]
        # Users are pinned to a version by a hash bucket: the share follows the weight.
        assert served / total <= step["weight"] / 100 + 0.15, step
    assert promoted["decision"] == "rejected"
    assert "rollback" in promoted["reason"]
    client = mlflow.MlflowClient(registry.settings.tracking_uri)
    assert alias_version(client, registry.name, "champion") == registry.versions["champion"]


def test_a_named_server_that_does_not_answer_fails_the_stage(registry, monkeypatch):
    """With a Connection naming a server, the canary never falls back to a stand-in."""
    from serving.local import free_port

    monkeypatch.setenv("AIGC_SERVER_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AIGC_ADMIN_KEY", "admin")
    versions = registry.versions
    evaluated = {"model_name": registry.name, "challenger_version": versions["healthy"],
                 "champion_version": versions["champion"],
                 "decision": {"promote": True, "reasons": ["offline gate passed"]}}
    client = mlflow.MlflowClient(registry.settings.tracking_uri)

    def record():
        return client.get_model_version(registry.name, versions["healthy"]).tags.get(
            "aigc.canary")

    before = record()
    with pytest.raises(RuntimeError, match="no model server answers"):
        _run(registry, "canary", {"evaluate": evaluated, "preprocess": registry.prep},
             f"canary-down-{uuid.uuid4().hex[:6]}")
    assert record() == before  # nothing recorded for a canary that never ran
