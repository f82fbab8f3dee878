import json

import pandas as pd
import pytest

from tasks.config import LifecycleConfig
from tasks.data.source import load_demo
from tasks.data.validate import ValidationFailed, mask_frame, run, run_suite
from tasks.stage import StageContext


def _ctx(frame: pd.DataFrame, home, cfg: LifecycleConfig) -> StageContext:
    path = home / "snap.parquet"
    frame.to_parquet(path, index=False)
    return StageContext(stage="validate", dag_id="d", run_id="r1", config=cfg,
                        inputs={"ingest": {"dataset_uri": str(path)}})


def test_demo_data_passes_after_masking(home):
    cfg = LifecycleConfig()
    result = run(_ctx(load_demo(["english", "chinese"]), home, cfg))
    assert result["success"] is True
    assert result["pii_masked"].get("EMAIL", 0) >= 1
    masked = pd.read_parquet(result["dataset_uri"])
    assert not masked["response"].str.contains("@example", regex=False).any()
    report = (home / "var/artifacts/d/r1/validate/validation_report.md").read_text()
    assert "PASSED" in report


def test_pii_is_masked_before_the_check():
    frame = pd.DataFrame({"prompt": ["my mail is a@b.io"], "response": ["call 13812345678"],
                          "language": ["english"]})
    masked, counts = mask_frame(frame)
    assert counts == {"EMAIL": 1, "PHONE": 1}
    assert run_suite(masked, LifecycleConfig())["success"]
    assert not run_suite(frame, LifecycleConfig())["success"]


def test_bad_rows_fail_with_named_expectations_and_artifacts_kept(home):
    cfg = LifecycleConfig(max_chars=40)
    frame = pd.DataFrame({
        "prompt": ["hello", "hello", None, "long one", "bad \x00 char"],
        "response": ["hi", "hi", "orphan", "x" * 200, "ok"],
        "language": ["english"] * 4 + ["french"],
    })
    with pytest.raises(ValidationFailed) as err:
        run(_ctx(frame, home, cfg))
    message = str(err.value)
    for expected in ("expect_column_values_to_not_be_null",
                     "expect_compound_columns_to_be_unique",
                     "expect_column_value_lengths_to_be_between",
                     "expect_column_values_to_be_in_set",
                     "expect_column_values_to_not_match_regex"):
        assert expected in message
    out = home / "var/artifacts/d/r1/validate"
    assert json.loads((out / "validation_result.json").read_text())["success"] is False
    assert "FAILED" in (out / "validation_report.md").read_text()
    assert not (out / "dataset-masked.parquet").exists()
