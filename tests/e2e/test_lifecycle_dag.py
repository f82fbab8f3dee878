"""The lifecycle DAG end to end through `airflow dags test`, on a tiny config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tasks.stage import safe_name
from tests.conftest import TINY, embedded_pngs, write_dataset
from tests.e2e.airflow_env import airflow_env, dag_test, make_run, migrate, runs
from tests.e2e.conftest import free_port

pytestmark = pytest.mark.e2e
STAGES = ["base_model", "ingest", "validate", "preprocess", "train", "register", "compress",
          "evaluate", "canary", "promote"]
# Compression on in run 1 with a gate every candidate passes, so the choice is the policy's.
COMPRESS_ON = {"compress_methods": ["torch_int8_dynamic", "modelopt_int8", "prune_structured"],
               "compress_policy": "smallest", "finetune_steps": 10,
               "compress_max_quality_loss": 1.0, "compress_min_speedup": 0.0,
               "compress_max_size_ratio": 10.0}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("e2e")
    # make_run starts an API server for the executor's workers on this port.
    env = airflow_env(home, api_port=free_port())
    migrate(env)
    return env


def _client(env) -> mlflow.MlflowClient:
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    return mlflow.MlflowClient()


def _summary(env) -> subprocess.CompletedProcess[str]:
    listing = json.dumps(runs(env))
    return subprocess.run([sys.executable, "-m", "tasks.summary"], input=listing, env=env,
                          capture_output=True, text=True, check=False)


def _run_dir(env, dag_run: dict) -> Path:
    return Path(env["AIGC_HOME"]) / "artifacts" / "aigc_lifecycle" / safe_name(
        dag_run["run_id"])


def _compress_result(env, dag_run: dict) -> dict:
    return json.loads((_run_dir(env, dag_run) / "compress" / "result.json").read_text())


def test_two_runs_second_compares_against_first_champion(env):
    """Run 1 trains the demo GPT-2 from scratch with Horovod and compresses; run 2
    fine-tunes a Llama checkpoint with FSDP, no compression, and must beat run 1's champion
    (the same registered model) offline and in the canary."""
    first = make_run(env, TINY | {"launcher": "horovod", "workers": 2} | COMPRESS_ON)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    # As `make run` shows it: each stage as it starts and ends, with its key figure.
    assert "  ▶ train\n" in first.stdout, first.stdout
    for stage in [*STAGES, "report"]:
        assert f"  ✔ {stage} in " in first.stdout, first.stdout
    assert " — dataset: 400 rows from demo://chatterbot" in first.stdout, first.stdout
    # ...and each task's log where the Airflow UI reads it.
    [run_logs] = (Path(env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"]) / "dag_id=aigc_lifecycle").glob(
        "run_id=*")
    for stage in STAGES:
        log = run_logs / f"task_id={stage}" / "attempt=1.log"
        assert f"[stage {stage}]" in log.read_text(), log
    summary = _summary(env)
    assert summary.returncode == 0, summary.stdout
    compressed = _compress_result(env, runs(env)[0])
    chosen = compressed["version"]
    smallest = min(compressed["candidates"], key=lambda c: c["measurement"]["size_bytes"])
    assert compressed["method"] == smallest["method"] and chosen == smallest["version"]
    assert f"compress: challenger is version {chosen} ({smallest['method']})" in summary.stdout
    assert "canary: skipped, no champion yet" in summary.stdout
    assert f"promote: promoted version {chosen}; champion is {chosen}" in summary.stdout
    client = _client(env)
    champion = client.get_model_version_by_alias("aigc-gpt2", "champion")
    assert str(champion.version) == chosen
    assert champion.tags["aigc.compress.method"] == smallest["method"]
    assert champion.tags["aigc.decision"] == "promoted"

    from tasks.scaffold import scaffold

    llama = scaffold("llama", Path(env["AIGC_ALLOWED_ROOTS"]) / "models" / "llama")
    second = dag_test(env, TINY | {"seed": 99, "launcher": "fsdp", "workers": 2,
                                   "compress_methods": [], "base_model": str(llama)})
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    summary = _summary(env)
    assert f"champion {chosen}" in summary.stdout  # compared against the first champion
    latest = max(client.search_model_versions("name = 'aigc-gpt2'"), key=lambda v: int(v.version))
    assert latest.tags["aigc.role"] == "trained"  # compression off: the trained model itself
    assert latest.tags["aigc.architecture"] == "LlamaForCausalLM"
    assert latest.tags["aigc.base_model"] == str(llama)
    assert "base model: LlamaForCausalLM" in summary.stdout
    assert latest.tags["aigc.decision"] in ("promoted", "rejected")
    assert "champion" in latest.tags["aigc.decision_reason"]
    # The second challenger meets a champion: the canary runs against a server the stage
    # started, under synthetic load, and promotion follows its decision.
    canary = json.loads(latest.tags["aigc.canary"])
    assert canary["champion"] == chosen and canary["steps"]
    assert canary["decision"] in ("promote", "rollback")
    assert (latest.tags["aigc.decision"] == "promoted") == (canary["decision"] == "promote")
    assert f"canary: {canary['decision']} version {latest.version}" in summary.stdout
    # The run's report, opened: its charts are embedded, real, non-empty images.
    newest = max(runs(env), key=lambda r: r["start_date"])
    report = json.loads((_run_dir(env, newest) / "report" / "result.json").read_text())
    page = Path(report["report_uri"])
    charts = embedded_pngs(page.read_text())
    assert list(charts) == ["data", "loss", "ab", "canary"]  # no compression
    assert all(len(png) > 5000 for png in charts.values())
    assert f"report: {page}" in summary.stdout

    # Lineage is one query: the parent run of each DAG run holds one nested run per stage.
    exp = client.get_experiment_by_name("aigc_lifecycle")
    launchers = []
    for dag_run in sorted(runs(env), key=lambda r: r["start_date"]):
        parent = client.search_runs([exp.experiment_id], filter_string=(
            f"tags.`aigc.dag_run_id` = '{dag_run['run_id']}' and tags.`aigc.stage` = 'parent'"))
        assert len(parent) == 1
        assert parent[0].data.tags["aigc.dataset_hash"]
        assert parent[0].info.status == "FINISHED"
        children = client.search_runs([exp.experiment_id], filter_string=(
            f"tags.`mlflow.parentRunId` = '{parent[0].info.run_id}'"))
        assert sorted(c.data.tags["aigc.stage"] for c in children) == sorted([*STAGES,
                                                                               "report"])
        train = next(c for c in children if c.data.tags["aigc.stage"] == "train")
        launchers.append((train.data.params["launcher"], train.data.params["workers"]))
    assert launchers == [("horovod", "2"), ("fsdp", "2")]


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
    assert ("not completed: validate, preprocess, train, register, compress, evaluate, "
            "canary, promote") in summary.stdout
    assert _client(env).search_model_versions("name = 'gate-model'") == []
    # The run is FAILED in MLflow too (validate marked it, then the report closed it).
    client = _client(env)
    exp = client.get_experiment_by_name("aigc_lifecycle")
    [parent] = client.search_runs([exp.experiment_id], filter_string=(
        "tags.`aigc.validation` = 'failed' and tags.`aigc.stage` = 'parent'"))
    assert parent.info.status == "FAILED"


def test_unknown_conf_key_fails_the_first_task_with_the_field_named(env):
    result = dag_test(env, TINY | {"max_stepz": 3})
    assert "max_stepz: unknown config field" in result.stdout + result.stderr
    assert _summary(env).returncode == 1


def test_a_bad_base_model_fails_the_run_at_its_first_stage_and_registers_nothing(env):
    result = dag_test(env, TINY | {"base_model": "/etc", "model_name": "base-gate"})
    log = result.stdout + result.stderr
    assert "base_model: '/etc' is outside the allowed roots" in log
    summary = _summary(env)
    assert summary.returncode == 1
    assert "not completed: base_model, preprocess, train" in summary.stdout
    assert _client(env).search_model_versions("name = 'base-gate'") == []
