"""DAG integrity: imports cleanly and fast, touches nothing at parse time, has the right shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.config import FeedbackConfig, params_schema
from tasks.settings import PROJECT_ROOT

DAGS = PROJECT_ROOT / "dags"
EXPECTED_UPSTREAM = {
    "base_model": [], "ingest": [], "validate": ["ingest"],
    "preprocess": ["base_model", "validate"], "train": ["base_model", "preprocess"],
    "register": ["base_model", "ingest", "train"], "compress": ["preprocess", "register"],
    "evaluate": ["compress", "preprocess"], "canary": ["evaluate", "preprocess"],
    "promote": ["canary", "evaluate"], "report": ["promote"], "run_failed": ["promote"],
}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "aigc_lifecycle" in dagbag.dags


def test_expected_task_graph(dagbag):
    dag = dagbag.dags["aigc_lifecycle"]
    assert {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks} == EXPECTED_UPSTREAM


def test_every_task_retries_with_backoff_and_a_timeout(dagbag):
    for dag in dagbag.dags.values():
        assert dag.tags, dag.dag_id
        assert dag.catchup is False
        for t in dag.tasks:
            if t.task_id == "run_failed":  # marks a failed run failed: nothing to retry
                continue
            assert t.retries >= 2, t.task_id
            assert t.retry_exponential_backoff, t.task_id
            assert t.execution_timeout is not None, t.task_id


def test_params_come_from_the_config_schema(dagbag):
    params = dagbag.dags["aigc_lifecycle"].params
    schema = params_schema()
    assert set(params.keys()) == set(schema)
    for name, spec in schema.items():
        param = params.get_param(name)
        assert param.value == spec["default"], name
        assert param.description == spec["description"], name
        assert param.schema["type"] == spec["type"], name


def test_lifecycle_runs_weekly_or_on_a_feedback_snapshot(dagbag):
    from aigc_airflow.feedback import FEEDBACK_SNAPSHOTS
    from airflow.sdk import AssetOrTimeSchedule

    schedule = dagbag.dags["aigc_lifecycle"].schedule
    assert isinstance(schedule, AssetOrTimeSchedule)
    assert schedule.timetable.expression == "0 0 * * 0"  # @weekly
    assert schedule.asset_condition == FEEDBACK_SNAPSHOTS


def test_feedback_dag_is_hourly_and_emits_the_snapshot_asset(dagbag):
    from aigc_airflow.feedback import FEEDBACK_SNAPSHOTS

    dag = dagbag.dags["aigc_feedback"]
    assert dag.schedule == "@hourly" and dag.max_active_runs == 1
    assert {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks} == {
        "analyze": [], "retrain_needed": ["analyze"], "export": ["retrain_needed"],
        "retention": []}
    assert dag.get_task("export").outlets == [FEEDBACK_SNAPSHOTS]
    assert set(dag.params.keys()) == set(params_schema(FeedbackConfig))


def test_every_task_and_dag_alerts_on_failure(dagbag):
    from aigc_airflow.alerts import on_failure, on_run_failure

    for dag in dagbag.dags.values():
        assert dag.on_failure_callback in (on_run_failure, [on_run_failure]), dag.dag_id
        for t in dag.tasks:
            if t.task_id == "run_failed":
                continue
            assert on_failure in (t.on_failure_callback or []) or t.on_failure_callback == \
                on_failure, t.task_id


PARSE_PROBE = """
import json, sys, time
import airflow.sdk  # the framework's own import cost is not the DAG's
from airflow.models import Variable, Connection
def refuse(*a, **k):
    raise RuntimeError("parse-time access")
Variable.get = refuse
Connection.get_connection_from_secrets = refuse
import sqlalchemy.engine
sqlalchemy.engine.Engine.connect = refuse
t = time.perf_counter()
import runpy
runpy.run_path(sys.argv[1], run_name="dag_file")
print(json.dumps({"seconds": time.perf_counter() - t, "heavy": sorted(
    m for m in ("torch", "transformers", "mlflow", "great_expectations", "pandas")
    if m in sys.modules)}))
"""


@pytest.mark.parametrize("on_kubernetes", [False, True], ids=["laptop", "kubernetes"])
@pytest.mark.parametrize("dag_file", sorted(DAGS.glob("*.py")), ids=lambda p: p.name)
def test_parse_is_fast_and_touches_no_variable_connection_or_database(dag_file: Path, tmp_path,
                                                                      on_kubernetes: bool):
    env = {"PATH": "/usr/bin:/bin", "AIRFLOW_HOME": str(tmp_path),
           # A database URL that cannot be opened: any parse-time query would fail loudly.
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/missing/dir/db"}
    if on_kubernetes:  # the pod tasks' operator is imported at parse time then
        (tmp_path / "kubernetes.json").write_text("{}")
        env["AIGC_KUBERNETES_CONFIG"] = str(tmp_path / "kubernetes.json")
    out = subprocess.run([sys.executable, "-c", PARSE_PROBE, str(dag_file)], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["seconds"] < 2.0, probe
    assert probe["heavy"] == [], f"heavy modules imported at parse time: {probe['heavy']}"


@pytest.mark.parametrize(("defaults", "expected"), [
    ('{"max_steps": 70, "launcher": "single"}', {"max_steps": 70, "launcher": "single"}),
    ('{"max_stepz": 7}', "max_stepz: unknown config field"),
])
def test_deployment_defaults_set_the_params_of_unconfigured_runs(defaults, expected, tmp_path):
    probe = ("import json; from airflow.dag_processing.dagbag import DagBag; "
             f"b = DagBag(dag_folder={str(DAGS / 'aigc_lifecycle.py')!r}); "
             "d = b.dags.get('aigc_lifecycle'); print(json.dumps({'errors': "
             "[str(e) for e in b.import_errors.values()], 'params': d and "
             "{k: d.params[k] for k in ('max_steps', 'launcher')}}))")
    env = os.environ | {"AIGC_LIFECYCLE_DEFAULTS": defaults, "AIRFLOW_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if isinstance(expected, dict):
        assert result == {"errors": [], "params": expected}
    else:
        assert result["params"] is None and expected in result["errors"][0]


K8S_PROBE = """
import json, time
t = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
b = DagBag(dag_folder=%r)
d = b.dags.get("aigc_lifecycle")
print(json.dumps({"errors": [str(e) for e in b.import_errors.values()],
                  "graph": d and {t.task_id: sorted(t.upstream_task_ids) for t in d.tasks},
                  "kinds": d and {t.task_id: type(t).__name__ for t in d.tasks},
                  "deferrable": d and d.get_task("train").deferrable,
                  "target": d and d.params["compute_target"]}))
"""


def _dagbag_with(settings: dict, tmp_path: Path) -> dict:
    path = tmp_path / "kubernetes.json"
    path.write_text(json.dumps(settings))
    env = os.environ | {"AIGC_KUBERNETES_CONFIG": str(path), "AIRFLOW_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", K8S_PROBE % str(DAGS / "aigc_lifecycle.py")],
                         env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_on_kubernetes_the_heavy_stages_are_pod_tasks_in_the_same_graph(tmp_path):
    """One DAG file: the deployment's settings turn train and compress into pod tasks (same
    place in the graph), deferrable, and the form offers compute_target=kubernetes."""
    probe = _dagbag_with({"namespace": "ml"}, tmp_path)
    assert probe["errors"] == [] and probe["graph"] == EXPECTED_UPSTREAM
    pods = {t for t, kind in probe["kinds"].items() if kind == "StagePodOperator"}
    assert pods == {"train", "compress"}
    assert probe["deferrable"] is True and probe["target"] == "kubernetes"


def test_a_bad_cluster_setting_fails_the_dag_import_naming_it(tmp_path):
    probe = _dagbag_with({"memory": "8GB"}, tmp_path)
    assert probe["graph"] is None
    assert "Kubernetes setting memory: '8GB' is not a Kubernetes quantity" in probe["errors"][0]


@pytest.mark.parametrize(("on_kubernetes", "target", "refused"), [
    (False, "kubernetes", True), (True, "local", True), (False, "local", False),
    (True, "kubernetes", False)])
def test_compute_target_must_be_what_the_deployment_offers(monkeypatch, tmp_path,
                                                           on_kubernetes, target, refused):
    from aigc_airflow.stages import context_config

    from tasks.errors import ConfigError

    if on_kubernetes:
        (tmp_path / "k.json").write_text("{}")
        monkeypatch.setenv("AIGC_KUBERNETES_CONFIG", str(tmp_path / "k.json"))
    else:
        monkeypatch.delenv("AIGC_KUBERNETES_CONFIG", raising=False)
    if refused:
        with pytest.raises(ConfigError, match=f"^compute_target: '{target}' is not offered"):
            context_config({}, {"compute_target": target})
    else:
        assert context_config({}, {"compute_target": target}).compute_target == target
