"""The run report: every chart exists, is a real PNG and is not blank; a failed run still
gets a page that says what did not complete."""

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
from tests.conftest import isolated_settings

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
    if not full:
        return
    (run_dir / "validate").mkdir(parents=True, exist_ok=True)
    (run_dir / "validate" / "report.md").write_text("| expectation | ok |")
    write_json(run_dir / "validate" / "result.json", {
        "report_uri": str(run_dir / "validate" / "report.md"), "pii_masked": 2})
    with stage_run(_ctx(settings, "train")) as run_:
        for step in (10, 20, 30):
            run_.log_metrics({"train_loss": 5.0 - step / 10}, step=step)
        run_.log_metrics({"val_loss": 4.5}, step=20)
    write_json(run_dir / "train" / "result.json", {"steps": 30, "train_loss": 2.0})
    verdict = {"passed": True, "size_ratio": 0.3, "speedup": 1.4, "quality_loss": 0.001}
    write_json(run_dir / "compress" / "result.json", {"method": "torch_int8_dynamic",
               "candidates": [{"method": "torch_int8_dynamic", "version": "2",
                               "verdict": verdict},
                              {"method": "prune_structured", "version": "3",
                               "verdict": verdict | {"passed": False, "speedup": 0.9}}]})
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


def _charts(html: str, folder: Path) -> list[Path]:
    return [folder / name for name in re.findall(r'<img src="([^"]+)"', html)]


def test_a_full_run_renders_every_chart(tmp_path):
    settings = isolated_settings(tmp_path)
    _results(settings, tmp_path, full=True)
    result = run_stage(_ctx(settings, "report"))
    page = Path(result["report_uri"])
    html = page.read_text()
    charts = _charts(html, page.parent)
    assert [c.stem for c in charts] == ["data", "loss", "compression", "ab", "canary"]
    for chart in charts:
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", chart
        import matplotlib.image

        pixels = matplotlib.image.imread(chart)
        assert pixels.shape[0] > 100 and np.std(pixels) > 0.01, chart  # not blank
    for title in ("Base model", "Data", "Validation", "Training", "Compression",
                  "Offline A/B", "Canary", "Decision"):
        assert f"<h2>{title}</h2>" in html
    assert ("LlamaForCausalLM (1,000,000 parameters, context 256) from /models/llama (local)"
            in html)
    assert result["missing"] == ["preprocess", "register"]  # not faked here
    import mlflow

    artifacts = mlflow.MlflowClient(settings.tracking_uri).list_artifacts(
        result["mlflow_run_id"], "report")
    assert {Path(a.path).name for a in artifacts} == {"report.html"} | {
        c.name for c in charts}
    assert result["url"].endswith(f"/runs/{result['mlflow_run_id']}/artifacts/report/"
                                  "report.html")


def test_a_failed_run_still_gets_a_report(tmp_path):
    settings = isolated_settings(tmp_path)
    _results(settings, tmp_path, full=False)
    result = run_stage(_ctx(settings, "report"))
    html = Path(result["report_uri"]).read_text()
    assert [c.stem for c in _charts(html, Path(result["report_uri"]).parent)] == ["data"]
    assert "not completed: validate, preprocess, train" in html
    assert json.loads(json.dumps(result))["charts"] == ["data.png"]
