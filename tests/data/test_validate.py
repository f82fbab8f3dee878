import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from tasks.config import LifecycleConfig
from tasks.data import ingest, preprocess, validate
from tasks.data.ingest import mask_frame
from tasks.data.source import ORIGIN
from tasks.data.validate import NO_PII, SHOWN_CHARS, ValidationFailed, run_suite
from tasks.stage import StageContext
from tests.conftest import scratch_base, write_dataset

PLANTED = {  # one of each kind masking knows, as a user's data would carry them
    "email": "li.wei@example.com",
    "phone after a Chinese character": "13812345678",
    "US phone": "(415) 555-2671",
    "resident ID": "110101199003074573",
    "card": "4111 1111 1111 1111",
    "IP": "203.0.113.77",
}


def _stage(name: str, home: Path, cfg: LifecycleConfig, **inputs) -> StageContext:
    return StageContext(stage=name, dag_id="d", run_id="r1", config=cfg, inputs=inputs)


def _ingest_and_validate(home: Path, rows: list[dict], **conf) -> tuple[dict, dict]:
    path = write_dataset(home / "data" / "dialogs.jsonl", rows)
    cfg = LifecycleConfig(dataset_uri=str(path), **conf)
    ingested = ingest.run(_stage("ingest", home, cfg))
    return ingested, validate.run(_stage("validate", home, cfg, ingest=ingested))


def test_demo_data_passes_with_its_emails_masked_at_ingest(home):
    cfg = LifecycleConfig()
    ingested = ingest.run(_stage("ingest", home, cfg))
    assert ingested["pii_masked"].get("EMAIL", 0) >= 1
    snapshot = pd.read_parquet(ingested["dataset_uri"])
    assert not snapshot["response"].str.contains("@example", regex=False).any()
    result = validate.run(_stage("validate", home, cfg, ingest=ingested))
    assert result["success"] is True and result["dataset_uri"] == ingested["dataset_uri"]
    report = (home / "var/artifacts/d/r1/validate/validation_report.md").read_text()
    assert "PASSED" in report and "PII masked at ingest" in report


def _every_text(root: Path) -> str:
    """Everything a run left under root, as text: Parquet cells, and every other file's
    bytes (SQLite stores text as it is)."""
    parts = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix == ".parquet":
            parts.append(pd.read_parquet(path).astype(str).to_csv())
        else:
            parts.append(path.read_bytes().decode("utf-8", errors="ignore"))
    return "\n".join(parts)


def test_nothing_personal_is_written_anywhere_by_a_run(home, caplog):
    rows = [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(40)]
    rows += [{"prompt": f"请打电话给我{PLANTED['phone after a Chinese character']}",
              "response": f"或者写信到 {PLANTED['email']}，或者打 {PLANTED['US phone']}"},
             {"prompt": f"我的身份证是{PLANTED['resident ID']}",
              "response": f"card {PLANTED['card']} from {PLANTED['IP']}"}]
    with caplog.at_level(logging.DEBUG):
        ingested, validated = _ingest_and_validate(home, rows)
        cfg = LifecycleConfig(vocab_size=300)
        preprocess.run(_stage("preprocess", home, cfg, validate=validated,
                              base_model=scratch_base()))
    assert ingested["pii_masked"] == {"EMAIL": 1, "PHONE": 2, "ID": 1, "CARD": 1, "IP": 1}
    written = _every_text(home / "var")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for kind, value in PLANTED.items():
        assert value not in written, f"{kind} written under var/"
        assert value not in logged, f"{kind} logged"
    assert "[PHONE]" in written and "[CARD]" in written


def test_bad_rows_are_named_by_their_source_line_with_values_cut(home):
    rows = [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(20)]
    rows[4] = {"prompt": "question 1", "response": "answer 1"}  # line 5 repeats line 2
    rows[7] = {"prompt": None, "response": "orphan"}  # line 8
    rows[11] = {"prompt": "p" * 5000, "response": "long"}  # line 12
    rows[14] = {"prompt": "bad \x00 char", "response": "ok"}  # line 15
    with pytest.raises(ValidationFailed) as err:
        _ingest_and_validate(home, rows, max_chars=200)
    message = str(err.value)
    assert "expect_column_values_to_not_be_null" in message and "at line 8" in message
    assert "expect_compound_columns_to_be_unique" in message
    assert "at line 2, line 5" in message
    assert "expect_column_value_lengths_to_be_between" in message and "line 12" in message
    assert "expect_column_values_to_not_match_regex" in message and "line 15" in message
    assert "p" * (SHOWN_CHARS + 1) not in message and "(5000 chars)" in message
    assert len(message) < 4000
    out = home / "var/artifacts/d/r1/validate"
    assert json.loads((out / "validation_result.json").read_text())["success"] is False
    report = (out / "validation_report.md").read_text()
    assert "FAILED" in report and "line 12" in report and "p" * 100 not in report


def test_text_left_unmasked_fails_naming_kinds_and_rows_never_values():
    frame = pd.DataFrame({"prompt": ["my mail is a@b.io", "hi"],
                          "response": ["call 13812345678", "hello"],
                          "language": ["english"] * 2, ORIGIN: ["line 1", "line 2"]})
    result = run_suite(frame, LifecycleConfig())
    check = next(r for r in result["results"] if r["expectation_config"]["type"] == NO_PII)
    assert not result["success"] and not check["success"]
    assert check["result"]["partial_unexpected_list"] == ["prompt: EMAIL", "response: PHONE"]
    assert "a@b.io" not in json.dumps(result) and "13812345678" not in json.dumps(result)
    masked, counts = mask_frame(frame)
    assert counts == {"EMAIL": 1, "PHONE": 1}
    assert run_suite(masked, LifecycleConfig())["success"]
