"""Erasure and retention on SQLite and PostgreSQL: a user's rows go from the store and from
every export not yet trained on, the models already trained on them are named, and the
record of it holds nothing personal."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tasks.feedback import rights
from tasks.feedback import store as store_module
from tasks.feedback.__main__ import main as cli
from tasks.feedback.identity import user_ref
from tasks.feedback.loop import export_snapshot
from tasks.feedback.store import FeedbackRecord, FeedbackStore, RequestRecord

KEY = b"test-user-hash-key"


def _request(request_id: str, user: str | None) -> RequestRecord:
    return RequestRecord(request_id=request_id, model_name="m", model_version="3",
                         route="champion", user_id=user_ref(user, KEY) if user else None,
                         prompt=f"prompt of {request_id}", response=f"answer of {request_id}",
                         params={}, tokens=3, latency_ms=1.0, cached=False, status="ok")


def _up(store: FeedbackStore, request_id: str) -> None:
    store.add_feedback(FeedbackRecord(f"fb-{request_id}", request_id, None, "up", None))


def _count(store: FeedbackStore, table: str) -> int:
    return store.query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"]


@pytest.fixture
def registry(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    client.create_registered_model("m")
    client.create_model_version("m", source=str(tmp_path), tags={
        "aigc.dag_run_id": "lifecycle-1", "aigc.role": "trained"})
    return uri


def test_an_erasure_removes_a_user_everywhere_but_history_and_says_what_trained(
        url, tmp_path, registry):
    store = FeedbackStore(url)
    for request_id, user in [("a1", "alice@example.com"), ("a2", "alice@example.com"),
                             ("a3", "alice@example.com"), ("b1", "bob"), ("n1", None)]:
        store.log_request(_request(request_id, user))
    _up(store, "a1")
    _up(store, "b1")
    trained = export_snapshot(store, tmp_path, "feedback-run-1", 4)
    store.mark_consumed(trained.export_id, "lifecycle-1")
    _up(store, "a2")
    _up(store, "n1")
    pending = export_snapshot(store, tmp_path, "feedback-run-2", 4)
    _up(store, "a3")  # not exported yet

    done = rights.erase(store, "alice@example.com", KEY, registry)

    assert (done["requests_deleted"], done["feedback_deleted"]) == (3, 3)
    assert done["exports_changed"] == (pending.export_id,)
    assert done["trained_in"] == ("lifecycle-1",)
    assert done["trained_versions"] == [{"model": "m", "version": "1",
                                         "dag_run_id": "lifecycle-1", "role": "trained"}]
    ref = user_ref("alice@example.com", KEY)
    assert store.query("SELECT COUNT(*) AS n FROM requests WHERE user_id = :r",
                       {"r": ref})[0]["n"] == 0
    assert sorted(r["request_id"] for r in store.query("SELECT request_id FROM requests")) == [
        "b1", "n1"]
    assert list(pd.read_parquet(pending.uri)["request_id"]) == ["n1"]
    assert store.query("SELECT row_count FROM feedback_exports WHERE export_id = :id",
                       {"id": pending.export_id}) == [{"row_count": 1}]
    # What was trained on stays as it was: the record names it instead.
    assert sorted(pd.read_parquet(trained.uri)["request_id"]) == ["a1", "b1"]
    assert export_snapshot(store, tmp_path, "feedback-run-3", 4).row_count == 0
    [record] = store.query("SELECT * FROM erasures")
    text = json.dumps(record)
    assert "alice" not in text and ref not in text and record["kind"] == "user"


def test_a_failed_rewrite_erases_nothing(url, tmp_path, registry, monkeypatch):
    store = FeedbackStore(url)
    store.log_request(_request("a1", "alice"))
    _up(store, "a1")
    export_snapshot(store, tmp_path, "feedback-run-1", 4)

    def broken(uri, ids):
        raise OSError("disk full")

    monkeypatch.setattr(rights, "rewrite_export", broken)
    with pytest.raises(OSError):
        rights.erase(store, "alice", KEY, registry)
    assert (_count(store, "requests"), _count(store, "feedback"), _count(store, "erasures")) \
        == (1, 1, 0)


def test_retention_purges_old_rows_but_keeps_what_an_export_still_needs(
        url, tmp_path, monkeypatch):
    clock = iter(["2026-01-01T00:00:00.000000+00:00"] * 50)
    monkeypatch.setattr(store_module, "now", lambda: next(clock))
    store = FeedbackStore(url)
    for request_id in ("old-plain", "old-trained", "old-pending"):
        store.log_request(_request(request_id, "u"))
    _up(store, "old-trained")
    trained = export_snapshot(store, tmp_path, "feedback-run-1", 4)
    store.mark_consumed(trained.export_id, "lifecycle-1")
    _up(store, "old-pending")
    pending = export_snapshot(store, tmp_path, "feedback-run-2", 4)
    monkeypatch.setattr(store_module, "now", lambda: "2026-03-01T00:00:00.000000+00:00")
    store.log_request(_request("new", "u"))
    _up(store, "new")

    at = pd.Timestamp("2026-03-02", tz="UTC").to_pydatetime()
    done = rights.purge(store, 30, at=at)

    assert (done.requests_deleted, done.feedback_deleted) == (2, 1)
    assert done.exports_changed == (trained.export_id,) and done.kind == "retention"
    assert sorted(r["request_id"] for r in store.query("SELECT request_id FROM requests")) == [
        "new", "old-pending"]
    assert not Path(trained.uri).exists()
    assert len(pd.read_parquet(pending.uri)) == 1
    assert rights.purge(store, 0) is None  # retention off


def test_the_cli_erases_by_the_servers_key_and_refuses_an_empty_id(
        url, tmp_path, registry, monkeypatch, capsys):
    monkeypatch.setenv("AIGC_FEEDBACK_DB", url)
    monkeypatch.setenv("AIGC_USER_HASH_KEY", KEY.decode())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry)
    store = FeedbackStore(url)
    store.log_request(_request("a1", "alice"))
    store.close()
    assert cli(["erase", "--user", "alice"]) == 0
    out = capsys.readouterr().out
    assert "1 request(s), 0 feedback row(s) deleted" in out
    assert "no model was trained on this user's data" in out
    assert cli(["erase", "--user", " "]) == 2
    assert "user: an empty user id names nobody" in capsys.readouterr().err


def test_retention_days_are_read_and_checked():
    assert rights.retention_days({}) == 0
    assert rights.retention_days({"AIGC_RETENTION_DAYS": "30"}) == 30
    with pytest.raises(ValueError, match="AIGC_RETENTION_DAYS: 'month'"):
        rights.retention_days({"AIGC_RETENTION_DAYS": "month"})
