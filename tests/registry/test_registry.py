import mlflow
import pandas as pd
import pytest

from tasks.lm.artifact import load_lm
from tasks.registry import promote, register
from tasks.registry.model import model_dir_of
from tasks.stage import StageContext
from tasks.train.loop import build_model
from tests.conftest import scratch_base


@pytest.fixture
def model_dir(tmp_path, tiny):
    from transformers import AutoTokenizer

    from tasks.data.preprocess import train_tokenizer

    train_tokenizer(["hello there", "how are you", "你好吗"] * 20, 300, tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    model = build_model(tiny, tok, None)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def _register(tiny, model_dir, run_id="run-1"):
    ctx = StageContext(stage="register", dag_id="aigc_lifecycle", run_id=run_id, config=tiny,
                       inputs={"train": {"model_uri": str(model_dir), "val_loss": 1.0,
                                         "val_perplexity": 2.7, "train_loss": 0.9},
                               "ingest": {"dataset_hash": "abc123"},
                               "base_model": scratch_base()})
    return register.run(ctx)


def test_registered_challenger_loads_by_alias_and_generates(home, tiny, model_dir):
    result = _register(tiny, model_dir)
    assert result["alias"] == "challenger"
    loaded = mlflow.pyfunc.load_model(f"models:/{tiny.model_name}@challenger")
    out = loaded.predict(pd.DataFrame({"prompt": ["hello", "你好"]}),
                         params={"max_new_tokens": 4, "seed": 1})
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    version = mlflow.MlflowClient().get_model_version(tiny.model_name, result["version"])
    assert version.tags["aigc.dag_run_id"] == "run-1"
    assert version.tags["aigc.dataset_hash"] == "abc123"
    assert float(version.tags["aigc.metric.val_perplexity"]) == pytest.approx(2.7)
    lm, tok = load_lm(model_dir_of(f"models:/{tiny.model_name}@challenger"))
    assert lm.module.model.config.n_embd == tiny.n_embd and len(tok) <= 300


def test_retried_register_reuses_its_version(home, tiny, model_dir):
    first = _register(tiny, model_dir)
    again = _register(tiny, model_dir)
    other = _register(tiny, model_dir, run_id="run-2")
    assert first["version"] == again["version"] != other["version"]


def test_a_register_cut_off_after_the_version_exists_is_not_registered_twice(
        home, tiny, model_dir, monkeypatch):
    client = mlflow.MlflowClient

    def cut_off(*args, **kwargs):
        raise ConnectionError("the task died here")

    with monkeypatch.context() as patch:
        # Whatever the stage calls first once the version exists
        patch.setattr(client, "set_model_version_tag", cut_off)
        patch.setattr(client, "update_model_version", cut_off)
        with pytest.raises(ConnectionError):
            _register(tiny, model_dir)
    retried = _register(tiny, model_dir)
    versions = client().search_model_versions(f"name = '{tiny.model_name}'")
    assert [v.version for v in versions] == [int(retried["version"])]
    assert client().get_model_version(tiny.model_name, retried["version"]).description


def _promote(tiny, version, promote_it, champion=None, canary=None):
    inputs = {"evaluate": {
        "model_name": tiny.model_name, "challenger_version": version,
        "champion_version": champion,
        "decision": {"promote": promote_it, "reasons": ["FAIL x", "ok y"]}}}
    ctx = StageContext(stage="promote", dag_id="aigc_lifecycle", run_id="run-1", config=tiny,
                       inputs=inputs | ({"canary": canary} if canary else {}))
    return promote.run(ctx)


def test_a_server_to_follow_without_its_admin_key_is_bad_input_and_moves_nothing(
        home, tiny, model_dir, monkeypatch):
    from tasks.errors import BadInput

    monkeypatch.delenv("AIGC_ADMIN_KEY", raising=False)
    version = _register(tiny, model_dir)["version"]
    canary = {"ran": True, "decision": "promote", "steps": 4, "history": ["promote at 100%"],
              "target": {"kind": "server", "url": "http://127.0.0.1:9"}}
    with pytest.raises(BadInput, match="AIGC_ADMIN_KEY: needed to steer the model server"):
        _promote(tiny, version, True, canary=canary)
    client = mlflow.MlflowClient()
    assert register.champion_version(client, tiny.model_name) is None
    assert "aigc.decision" not in client.get_model_version(tiny.model_name, version).tags


def test_promote_moves_champion_only_when_decided(home, tiny, model_dir):
    v1 = _register(tiny, model_dir)["version"]
    v2 = _register(tiny, model_dir, run_id="run-2")["version"]
    client = mlflow.MlflowClient()
    assert _promote(tiny, v1, True)["champion_version"] == v1
    assert str(client.get_model_version_by_alias(tiny.model_name, "champion").version) == v1
    rejected = _promote(tiny, v2, False, champion=v1)
    assert rejected["decision"] == "rejected" and rejected["champion_version"] == v1
    assert str(client.get_model_version_by_alias(tiny.model_name, "champion").version) == v1
    tags = client.get_model_version(tiny.model_name, v2).tags
    assert tags["aigc.decision"] == "rejected"
    assert "FAIL x" in tags["aigc.decision_reason"]


def test_the_registry_and_runs_describe_themselves_and_link_back_to_airflow(
        home, tiny, model_dir, monkeypatch):
    from tasks.registry.register import MODEL_DESCRIPTION

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.example:8080")
    version = _register(tiny, model_dir)["version"]
    _promote(tiny, version, True)
    client = mlflow.MlflowClient()
    assert client.get_registered_model(tiny.model_name).description == MODEL_DESCRIPTION
    page = "http://airflow.example:8080/dags/aigc_lifecycle/runs/run-1"
    described = client.get_model_version(tiny.model_name, version).description
    assert described.startswith(f"Trained from scratch (role `trained`); made by Airflow DAG "
                                f"run [`run-1`]({page}/tasks/register) of `aigc_lifecycle`.")
    assert described.endswith("Decision: promoted — FAIL x; ok y; canary: no canary stage")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string="tags.`aigc.dag_run_id` = 'run-1'")
    urls = {r.data.tags["aigc.stage"]: r.data.tags["aigc.airflow_url"] for r in runs}
    assert urls == {"parent": page, "register": f"{page}/tasks/register",
                    "promote": f"{page}/tasks/promote"}
    notes = {r.data.tags["aigc.stage"]: r.data.tags["mlflow.note.content"] for r in runs}
    assert notes["promote"] == (f"Stage `promote` of Airflow DAG run [`run-1`]"
                                f"({page}/tasks/promote) of `aigc_lifecycle`.")
