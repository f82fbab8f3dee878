"""The compress stage against a real MLflow registry: every candidate registered with its
verdict and loadable, the best passing one aliased `challenger`, or none and the reason."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from tasks.cli import run_stage
from tasks.compress.gate import GateVerdict, Measurement, choose
from tasks.config import COMPRESSION_METHODS, LifecycleConfig
from tasks.errors import BadInput
from tasks.registry import register
from tasks.stage import StageContext
from tests.compress.conftest import COMPRESS
from tests.conftest import scratch_base

METHODS = ["torch_int8_dynamic", "modelopt_int8", "prune_structured", "inc_woq_rtn"]
# Every method that runs on a CPU, for the test that loads each artifact back from MLflow.
CPU_METHODS = [m for m in COMPRESSION_METHODS if m != "tensorrt_int8"]
LENIENT = {"compress_max_quality_loss": 1.0, "compress_min_speedup": 0.0,
           "compress_max_size_ratio": 10.0}


def _ctx(home, trained, stage, run_id, inputs, **conf) -> StageContext:
    _, prep, train = trained
    cfg = LifecycleConfig.from_dict(COMPRESS | {"compress_methods": METHODS} | conf)
    return StageContext(stage=stage, dag_id="aigc_lifecycle", run_id=run_id, config=cfg,
                        inputs={"preprocess": prep, "train": train, "base_model": scratch_base(),
                                "ingest": {"dataset_hash": "feedbeef"}} | inputs)


def _compress(home, trained, run_id, **conf) -> dict:
    reg = register.run(_ctx(home, trained, "register", run_id, {}, **conf))
    return run_stage(_ctx(home, trained, "compress", run_id, {"register": reg}, **conf))


def _alias(name: str) -> str:
    return str(mlflow.MlflowClient().get_model_version_by_alias(name, "challenger").version)


def test_every_candidate_is_registered_loadable_and_the_best_becomes_challenger(home, trained):
    result = _compress(home, trained, "run-pass", compress_policy="smallest",
                       compress_methods=CPU_METHODS, **LENIENT)
    client = mlflow.MlflowClient()
    name = result["model_name"]
    assert [c["method"] for c in result["candidates"]] == CPU_METHODS
    scored = [(c["method"], Measurement(**c["measurement"]), GateVerdict.from_dict(c["verdict"]))
              for c in result["candidates"]]
    assert result["method"] == choose(scored, "smallest")
    assert _alias(name) == result["version"] != result["baseline_version"]
    for cand in result["candidates"]:
        version = client.get_model_version(name, cand["version"])
        tags = version.tags
        assert tags["aigc.compress.method"] == cand["method"]
        assert tags["aigc.compress.verdict"] == "pass"
        assert tags["aigc.dataset_hash"] == "feedbeef"  # lineage carried to every candidate
        assert int(tags["aigc.compress.size_bytes"]) == cand["measurement"]["size_bytes"]
        for key in ("latency_ms", "perplexity", "char_perplexity", "quality_loss", "speedup",
                    "size_ratio"):
            assert float(tags[f"aigc.compress.{key}"]) == pytest.approx(
                cand["measurement"].get(key, cand["verdict"].get(key)), rel=1e-3)
        model = mlflow.pyfunc.load_model(f"models:/{name}/{cand['version']}")
        out = model.predict(pd.DataFrame({"prompt": ["hello", "你好"]}),
                            params={"max_new_tokens": 4, "seed": 1})
        assert len(out) == 2 and all(isinstance(t, str) for t in out)


def test_no_passing_candidate_keeps_the_uncompressed_challenger_and_says_why(home, trained):
    result = _compress(home, trained, "run-strict", compress_max_size_ratio=0.001)
    name = result["model_name"]
    assert result["method"] == "none"
    assert _alias(name) == result["version"] == result["baseline_version"]
    assert result["reason"].startswith("no candidate passed the gate")
    assert "FAIL size ratio" in result["reason"]
    client = mlflow.MlflowClient()
    base = client.get_model_version(name, result["baseline_version"])
    assert base.tags["aigc.compress.outcome"] == result["reason"]
    for cand in result["candidates"]:
        assert client.get_model_version(name, cand["version"]).tags[
            "aigc.compress.verdict"] == "fail"


def test_a_retried_compress_reuses_its_candidates_and_versions(home, trained):
    first = _compress(home, trained, "run-retry", **LENIENT)
    count = len(mlflow.MlflowClient().search_model_versions(f"name = '{first['model_name']}'"))
    again = _compress(home, trained, "run-retry", **LENIENT)
    assert again["candidates"] == first["candidates"]
    assert again["version"] == first["version"]
    assert len(mlflow.MlflowClient().search_model_versions(
        f"name = '{first['model_name']}'")) == count


def test_no_methods_passes_the_challenger_through(home, trained):
    result = _compress(home, trained, "run-off", compress_methods=[])
    assert result["method"] == "none" and result["candidates"] == []
    assert result["version"] == result["baseline_version"] == _alias(result["model_name"])


def test_a_method_that_cannot_run_here_fails_the_stage_and_moves_nothing(home, trained):
    reg = register.run(_ctx(home, trained, "register", "run-trt", {}))
    ctx = _ctx(home, trained, "compress", "run-trt", {"register": reg},
               compress_methods=["torch_int8_dynamic", "tensorrt_int8"])
    with pytest.raises(BadInput, match="tensorrt_int8"):
        run_stage(ctx)
    assert _alias(reg["model_name"]) == reg["version"]


def test_distillation_can_take_the_champion_as_teacher(home, trained):
    first = register.run(_ctx(home, trained, "register", "run-champ", {}))
    mlflow.MlflowClient().set_registered_model_alias(first["model_name"], "champion",
                                                     first["version"])
    result = _compress(home, trained, "run-student", compress_methods=["distill"],
                       distill_teacher="champion", **LENIENT)
    report = result["candidates"][0]["report"]
    assert report["teacher"] == f"champion version {first['version']}"
    assert report["parameter_ratio"] < 0.5
