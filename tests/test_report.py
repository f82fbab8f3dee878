"""The run report: one self-contained page whose embedded charts are real, non-blank PNGs;
validation as a table, failures first; a failed run still gets a page that says what did
not complete."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.cli import run_stage
from tasks.config import LifecycleConfig
from tasks.stage import StageContext, write_json
from tasks.tracking import stage_run
from tests.conftest import embedded_pngs, isolated_settings

OBS = {"requests": 100, "errors": 1, "p99_ms": 40.0, "feedback_positive": 8,
       "feedback_total": 10}
METRICS = {"perplexity": 60.0, "char_perplexity": 3.1, "distinct_1": 0.5, "distinct_2": 0.8,
           "similarity": 0.3}


def _ctx(settings, stage: str) -> StageContext:
    return StageContext(stage=stage, dag_id="aigc_lifecycle", run_id="run-1",
                        config=LifecycleConfig(), settings=settings)


def _results(settings, tmp_path: Path, full: bool) -> None:
    run_dir = _ctx(settings, "report").run_dir
    data = tmp_path / "data.parquet"
    pd.DataFrame({"prompt": ["hi", "你好", "how?"], "response": ["hello", "你好!", "fine"],
                  "language": ["english", "chinese", "english"]}).to_parquet(data)
    write_json(run_dir / "base_model" / "result.json", {
        "kind": "local", "source": "/models/llama", "architecture": "LlamaForCausalLM",
        "parameters": 1_000_000, "context": 256, "chat_template": "plain",
        "model_name": "aigc-llama"})
    write_json(run_dir / "ingest" / "result.json", {
        "dataset_uri": str(data), "rows": 3, "dataset_hash": "ab" * 32, "source_uri": "demo",
        "feedback": {"exports": [], "rows": 0}})
    write_json(run_dir / "validate" / "validation_result.json", {"results": [
        _expectation("expect_column_values_to_not_be_null", True),
        _expectation("expect_compound_columns_to_be_unique", full)]})
    if not full:
        return
    write_json(run_dir / "validate" / "result.json", {"pii_masked": {"EMAIL": 2}})
    with stage_run(_ctx(settings, "train")) as run_:
        for step in (10, 20, 30):
            run_.log_metrics({"train_loss": 5.0 - step / 10}, step=step)
        run_.log_metrics({"val_loss": 4.5}, step=20)
    write_json(run_dir / "train" / "result.json", {"steps": 30, "train_loss": 2.0123456789,
                                                    "trainable_parameters": 1234567})
    verdict = {"passed": True, "size_ratio": 0.3, "speedup": 1.4, "quality_loss": 0.001,
               "speed_spread": 0.1, "speed_conclusive": True}
    write_json(run_dir / "compress" / "result.json", {"method": "torch_int8_dynamic",
               "reason": "torch_int8_dynamic is the fastest candidate that passed the gate",
               "candidates": [{"method": "torch_int8_dynamic", "version": "2",
                               "verdict": verdict},
                              {"method": "prune_structured", "version": "3",
                               "verdict": verdict | {"passed": False, "speedup": 0.9,
                                                     "speed_conclusive": False}}]})
    write_json(run_dir / "evaluate" / "result.json", {
        "challenger": METRICS, "champion": METRICS | {"distinct_2": 0.7},
        "decision": {"promote": True, "reasons": ["better"]}})
    steps = [{"weight": w, "action": a, "reasons": ["ok"], "champion": OBS,
              "challenger": OBS | {"errors": e}} for w, a, e in
             ((5, "advance", 0), (25, "advance", 1), (50, "advance", 2), (100, "promote", 1))]
    write_json(run_dir / "canary" / "canary.json", {"decision": "promote", "steps": steps})
    write_json(run_dir / "canary" / "result.json", {"ran": True, "decision": "promote"})
    write_json(run_dir / "promote" / "result.json", {"decision": "promoted", "version": "2",
                                                      "reason": "canary passed"})


def _expectation(kind: str, success: bool) -> dict:
    return {"success": success, "expectation_config": {"type": kind, "kwargs": {"column": "x"}},
            "result": {} if success else {"unexpected_count": 1,
                                           "partial_unexpected_list": ["dup"]}}


def _charts(page: str) -> dict[str, np.ndarray]:
    import io

    import matplotlib.image

    return {name: matplotlib.image.imread(io.BytesIO(png), format="png")
            for name, png in embedded_pngs(page).items()}


def test_a_full_run_renders_every_chart(tmp_path):
    settings = isolated_settings(tmp_path)
    _results(settings, tmp_path, full=True)
    result = run_stage(_ctx(settings, "report"))
    html = Path(result["report_uri"]).read_text()
    charts = _charts(html)
    assert list(charts) == ["data", "loss", "compression", "ab", "canary"] == result["charts"]
    for name, pixels in charts.items():
        assert pixels.shape[0] > 100 and np.std(pixels) > 0.01, name  # not blank
    for title in ("Base model", "Data", "Validation", "Training", "Compression",
                  "Offline A/B", "Canary", "Decision"):
        assert f"<h2>{title}</h2>" in html
    assert ("LlamaForCausalLM (1,000,000 parameters, context 256) from /models/llama (local)"
            in html)
    # Numbers as a person reads them; the inconclusive speed-up says so.
    assert "<td>2.012</td>" in html and "<td>1,234,567</td>" in html
    assert "0.90x ±0.05 (inconclusive)" in html
    assert "}}" not in html.split("</style>")[0]  # the style sheet parses
    assert result["missing"] == ["preprocess", "register"]  # not faked here
    import mlflow

    artifacts = mlflow.MlflowClient(settings.tracking_uri).list_artifacts(
        result["mlflow_run_id"], "report")
    assert [Path(a.path).name for a in artifacts] == ["report.html"]
    # Two stages are missing here: the run they belong to did not succeed.
    assert mlflow.MlflowClient(settings.tracking_uri).get_run(
        result["mlflow_run_id"]).info.status == "FAILED"
    # In MLflow's artifact viewer, on its training (not GenAI) view.
    assert result["url"].endswith(f"/runs/{result['mlflow_run_id']}/artifacts/report/"
                                  "report.html?workflowType=machine_learning")


def test_a_failed_run_still_gets_a_report_with_the_failing_expectation_first(tmp_path):
    settings = isolated_settings(tmp_path)
    _results(settings, tmp_path, full=False)
    result = run_stage(_ctx(settings, "report"))
    html = Path(result["report_uri"]).read_text()
    assert list(_charts(html)) == ["data"]
    assert "not completed: validate, preprocess, train" in html
    assert "<b>failed</b>: 1 of 2 expectations" in html
    first, second = re.findall(r"<td>(expect_\w+)</td>", html)
    assert (first, second) == ("expect_compound_columns_to_be_unique",
                               "expect_column_values_to_not_be_null")
    assert '<tr class="fail"><td>NO</td>' in html
    assert json.loads(json.dumps(result))["charts"] == ["data"]
    import mlflow

    parent = mlflow.MlflowClient(settings.tracking_uri).get_run(result["mlflow_run_id"])
    assert parent.info.status == "FAILED" and parent.data.tags["aigc.run_state"] == "failed"
