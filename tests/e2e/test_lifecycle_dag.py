"""The lifecycle DAG end to end through `airflow dags test`, on a tiny config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.conftest import TINY, write_dataset
from tests.e2e.airflow_env import airflow_env, dag_test, migrate, runs

pytestmark = pytest.mark.e2e
STAGES = ["ingest", "validate", "preprocess", "train", "register", "evaluate", "promote"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("e2e")
    env = airflow_env(home)
    migrate(env)
    return env


def _client(env) -> mlflow.MlflowClient:
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    return mlflow.MlflowClient()


def _summary(env) -> subprocess.CompletedProcess[str]:
    listing = json.dumps(runs(env))
    return subprocess.run([sys.executable, "-m", "tasks.summary"], input=listing, env=env,
                          capture_output=True, text=True, check=False)


def test_two_runs_second_compares_against_first_champion(env):
    """Run 1 trains with Horovod, run 2 with DDP (2 local workers each)."""
    first = dag_test(env, TINY | {"launcher": "horovod", "workers": 2})
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    summary = _summary(env)
    assert summary.returncode == 0, summary.stdout
    assert "promote: promoted version 1; champion is 1" in summary.stdout
    client = _client(env)
    assert str(client.get_model_version_by_alias("aigc-gpt2", "champion").version) == "1"

    second = dag_test(env, TINY | {"seed": 99, "launcher": "ddp", "workers": 2})
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    summary = _summary(env)
    assert "champion 1" in summary.stdout  # evaluate compared against the first champion
    v2 = client.get_model_version("aigc-gpt2", "2")
    assert v2.tags["aigc.decision"] in ("promoted", "rejected")
    assert "champion" in v2.tags["aigc.decision_reason"]

    # Lineage is one query: the parent run of each DAG run holds one nested run per stage.
    exp = client.get_experiment_by_name("aigc_lifecycle")
    launchers = []
    for dag_run in sorted(runs(env), key=lambda r: r["start_date"]):
        parent = client.search_runs([exp.experiment_id], filter_string=(
            f"tags.`aigc.dag_run_id` = '{dag_run['run_id']}' and tags.`aigc.stage` = 'parent'"))
        assert len(parent) == 1
        assert parent[0].data.tags["aigc.dataset_hash"]
        children = client.search_runs([exp.experiment_id], filter_string=(
            f"tags.`mlflow.parentRunId` = '{parent[0].info.run_id}'"))
        assert sorted(c.data.tags["aigc.stage"] for c in children) == sorted(STAGES)
        train = next(c for c in children if c.data.tags["aigc.stage"] == "train")
        launchers.append((train.data.params["launcher"], train.data.params["workers"]))
    assert launchers == [("horovod", "2"), ("ddp", "2")]


def test_validation_gate_fails_the_run_and_registers_nothing(env):
    home = env["AIGC_ALLOWED_ROOTS"]
    rows = [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(50)]
    rows += [{"prompt": "question 1", "response": "answer 1"},  # duplicate
             {"prompt": None, "response": "orphan"},  # null
             {"prompt": "long", "response": "x" * 300}]  # over max_chars
    path = write_dataset(Path(home) / "bad" / "dialogs.jsonl", rows)
    conf = TINY | {"dataset_uri": str(path), "max_chars": 200, "model_name": "gate-model"}
    result = dag_test(env, conf)
    log = result.stdout + result.stderr
    assert "expect_column_values_to_not_be_null" in log
    assert "expect_compound_columns_to_be_unique" in log
    summary = _summary(env)
    assert summary.returncode == 1
    assert "validation: FAILED" in summary.stdout
    assert "not completed: validate, preprocess, train, register, evaluate, promote" in (
        summary.stdout)
    assert _client(env).search_model_versions("name = 'gate-model'") == []


def test_unknown_conf_key_fails_the_first_task_with_the_field_named(env):
    result = dag_test(env, TINY | {"max_stepz": 3})
    assert "max_stepz: unknown config field" in result.stdout + result.stderr
    assert _summary(env).returncode == 1
