"""The feedback DAG's work on a real store: windows, the decision, the snapshot, and the
lifecycle ingest that merges exactly the snapshot's rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd

from tasks.config import FeedbackConfig, LifecycleConfig
from tasks.data.ingest import run as ingest
from tasks.feedback.loop import analyze, collect_stats, export_snapshot
from tasks.feedback.store import FeedbackStore
from tasks.stage import StageContext
from tests.conftest import TINY, isolated_settings
from tests.feedback.test_store import feedback, request

NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)
CFG = FeedbackConfig(min_new_feedback=5, min_window_feedback=4, min_window_responses=4)


def _age(store: FeedbackStore, table: str, key: str, ident: str, hours: float) -> None:
    """Backdate a row: windows are judged on created_at."""
    at = (NOW - timedelta(hours=hours)).isoformat(timespec="microseconds")
    store.query(f"UPDATE {table} SET created_at = :at WHERE {key} = :id",
                {"at": at, "id": ident})


def _served(store: FeedbackStore, i: int, hours: float, thumbs: str) -> None:
    store.log_request(request(i, prompt=f"question {i}?"))
    _age(store, "requests", "request_id", f"req-{i}", hours)
    store.add_feedback(feedback(i, f"req-{i}", thumbs=thumbs))
    _age(store, "feedback", "feedback_id", f"fb-{i}", hours)


def test_windows_split_by_time_and_drift_triggers(tmp_path):
    store = FeedbackStore(str(tmp_path / "f.db"))
    for i in range(4):  # baseline: a day ago, all positive
        _served(store, i, hours=30, thumbs="up")
    for i in range(4, 8):  # recent: mostly negative
        _served(store, i, hours=1, thumbs="down" if i < 7 else "up")
    stats = collect_stats(store, "3", CFG, NOW)
    assert (stats.baseline_feedback, stats.baseline_negative) == (4, 0)
    assert (stats.recent_feedback, stats.recent_negative) == (4, 3)
    assert stats.new_usable == 5 and stats.hours_since_last_trigger is None
    assert stats.recent_responses == 4 and stats.recent_diversity > 0
    result = analyze(store, "3", CFG, NOW)
    assert result["retrain"] and any(r.startswith("drift: negative") for r in result["reasons"])


def test_snapshot_then_cooldown_then_ingest_merges_exactly_those_rows(tmp_path):
    settings = isolated_settings(tmp_path)
    store = FeedbackStore(settings.feedback_db)
    for i in range(6):
        _served(store, i, hours=1, thumbs="up" if i != 2 else "down")
    export = export_snapshot(store, tmp_path, "feedback-run-1", CFG.min_rating)
    snapshot = pd.read_parquet(export.uri)
    assert export.row_count == len(snapshot) == 5
    assert set(snapshot.columns) >= {"prompt", "response", "language", "feedback_id"}
    after = analyze(store, "3", CFG)  # right after the trigger: cooldown
    assert not after["retrain"] and after["reasons"][0].startswith("cooldown")
    assert collect_stats(store, "3", CFG, NOW).new_usable == 0

    ctx = StageContext(stage="ingest", dag_id="aigc_lifecycle", run_id="lifecycle-1",
                       config=LifecycleConfig.from_dict(TINY), settings=settings,
                       inputs={"feedback": {"exports": [
                           {"export_id": export.export_id, "uri": export.uri, "rows": 5}]}})
    result = ingest(ctx)
    assert result["feedback"] == {"exports": [export.export_id], "rows": 5, "dropped": {}}
    merged = pd.read_parquet(result["dataset_uri"])
    assert result["rows"] == TINY["max_rows"] + 5 == len(merged)
    assert merged.tail(5)["prompt"].tolist() == snapshot["prompt"].tolist()
    assert store.query("SELECT consumed_by FROM feedback_exports") == [
        {"consumed_by": "lifecycle-1"}]


def test_feedback_unfit_to_train_is_left_out_by_reason(tmp_path):
    from tasks.data.ingest import feedback_rows

    corpus = pd.DataFrame({"prompt": ["hi"], "response": ["hello"], "language": ["english"]})
    snapshot = tmp_path / "s.parquet"
    pd.DataFrame({
        "prompt": ["hi", "ok?", "why?", "how?", "how?", "你好", "bonjour"],
        "response": ["hello", "", "bro\u0000ken", "fine", "fine", "你好!", "salut"],
        "language": ["english"] * 5 + ["chinese", "french"],
    }).to_parquet(snapshot)
    kept, dropped = feedback_rows([{"export_id": "e1", "uri": str(snapshot)}], corpus,
                                  LifecycleConfig.from_dict(TINY))
    assert kept["prompt"].tolist() == ["how?", "你好"]
    # Named for the validation report as where they came from.
    assert kept["origin"].tolist() == ["feedback export e1 row 4", "feedback export e1 row 6"]
    assert dropped == {"duplicate": 2, "length": 1, "characters": 1, "language": 1}
