"""The feedback store on SQLite and on PostgreSQL: migrations, concurrent writes, masking,
and exports that never hand a row out twice."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest

from tasks.feedback.store import (
    MIGRATIONS,
    FeedbackConflict,
    FeedbackLimit,
    FeedbackRecord,
    FeedbackStore,
    RequestRecord,
    UnknownRequest,
)


def request(i: int, version: str = "3", status: str = "ok", **kw) -> RequestRecord:
    return RequestRecord(request_id=kw.get("request_id", f"req-{i}"),
                         model_name=kw.get("model_name", "m"),
                         model_version=version, route="champion", user_id=None,
                         prompt=kw.get("prompt", f"prompt {i}"), response=f"answer {i}",
                         params={"seed": i}, tokens=3, latency_ms=1.5, cached=False,
                         status=status)


def feedback(i: int, request_id: str, thumbs: str | None = "up", rating: int | None = None,
             comment: str | None = None) -> FeedbackRecord:
    return FeedbackRecord(f"fb-{i}", request_id, rating, thumbs if rating is None else None,
                          comment)


def test_migrations_are_versioned_and_applied_once(url):
    store = FeedbackStore(url)
    assert store.query("SELECT version FROM schema_migrations ORDER BY version") == [
        {"version": v} for v in range(1, len(MIGRATIONS) + 1)]
    store.close()
    again = FeedbackStore(url)  # a second start migrates nothing
    assert len(again.query("SELECT * FROM schema_migrations")) == len(MIGRATIONS)
    again.close()


def test_a_version_1_database_upgrades_with_its_rows(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at "
                     "TEXT NOT NULL);" + MIGRATIONS[0] + ";INSERT INTO schema_migrations "
                     "VALUES (1, 'then'); INSERT INTO requests (request_id, created_at, "
                     "model_name, model_version, route, prompt, params, latency_ms, status) "
                     "VALUES ('old', 'then', 'm', '1', 'champion', 'p', '{}', 1, 'ok');")
    db.close()
    store = FeedbackStore(str(path))
    assert [r["version"] for r in store.query("SELECT version FROM schema_migrations")] == \
        list(range(1, len(MIGRATIONS) + 1))
    row, created, first = store.add_feedback(feedback(1, "old"))
    assert created and first and row["export_id"] is None and row["model_version"] == "1"


def test_concurrent_requests_and_feedback_are_all_stored_once(url):
    store = FeedbackStore(url)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.log_request(request(i)), range(40)))
        results = list(pool.map(lambda i: store.add_feedback(feedback(i, f"req-{i % 40}")),
                                list(range(80)) + list(range(20))))  # 20 retried posts
    assert sum(r.created for r in results) == 80
    assert store.query("SELECT COUNT(*) AS n FROM feedback")[0]["n"] == 80
    # Two rows for each of the 40 requests: one of them is each request's first.
    firsts = [r.row["request_id"] for r in results if r.first]
    assert sorted(firsts) == sorted(f"req-{i}" for i in range(40))


def test_a_request_takes_a_limited_number_of_feedback_rows(url):
    store = FeedbackStore(url)
    store.log_request(request(1))
    stored = [store.add_feedback(feedback(i, "req-1"), max_per_request=3) for i in range(3)]
    assert [s.first for s in stored] == [True, False, False]
    with pytest.raises(FeedbackLimit, match="req-1 already holds 3"):
        store.add_feedback(feedback(9, "req-1"), max_per_request=3)
    assert store.add_feedback(feedback(0, "req-1"), max_per_request=3).created is False


def test_unknown_request_conflicting_id_and_masked_text(url):
    store = FeedbackStore(url)
    store.log_request(request(1, prompt="mail me at jane.doe@example.com"))
    with pytest.raises(UnknownRequest):
        store.add_feedback(feedback(1, "nope"))
    store.log_request(request(2))
    store.add_feedback(feedback(1, "req-1", comment="call +1 415 555 0100"))
    with pytest.raises(FeedbackConflict):
        store.add_feedback(feedback(1, "req-2"))
    stored = store.query("SELECT r.prompt, f.comment FROM requests r JOIN feedback f ON "
                         "f.request_id = r.request_id")[0]
    assert "jane.doe" not in stored["prompt"] and "555" not in stored["comment"]


def test_an_export_takes_each_well_rated_row_once(url):
    store = FeedbackStore(url)
    for i in range(6):
        store.log_request(request(i, status="error" if i == 5 else "ok"))
    store.add_feedback(feedback(0, "req-0", thumbs="up"))
    store.add_feedback(feedback(1, "req-1", thumbs="down"))
    store.add_feedback(feedback(2, "req-2", rating=5))
    store.add_feedback(feedback(3, "req-3", rating=3))
    store.add_feedback(feedback(5, "req-5", thumbs="up"))  # on a failed request
    written: list[list[dict]] = []

    def write(rows):
        written.append(rows)
        return f"file://snap-{len(written)}"

    first = store.export_feedback("run-1", 4, write)
    assert first.created and first.row_count == 2
    assert sorted(r["feedback_id"] for r in written[0]) == ["fb-0", "fb-2"]
    assert store.export_feedback("run-1", 4, write) == first.__class__(
        first.export_id, "run-1", first.uri, 2, False)  # a retry: the same export
    store.add_feedback(feedback(4, "req-4", rating=4))
    second = store.export_feedback("run-2", 4, write)
    assert second.row_count == 1 and [r["feedback_id"] for r in written[1]] == ["fb-4"]
    assert len(written) == 2  # the retry wrote nothing
    store.mark_consumed(first.export_id, "lifecycle-1")
    store.mark_consumed(first.export_id, "lifecycle-2")  # already consumed: kept
    assert store.query("SELECT consumed_by FROM feedback_exports WHERE export_id = :id",
                       {"id": first.export_id}) == [{"consumed_by": "lifecycle-1"}]


def test_a_failed_write_exports_and_marks_nothing(url):
    store = FeedbackStore(url)
    store.log_request(request(0))
    store.add_feedback(feedback(0, "req-0"))

    def broken(rows):
        raise OSError("disk full")

    with pytest.raises(OSError):
        store.export_feedback("run-1", 4, broken)
    assert store.query("SELECT COUNT(*) AS n FROM feedback_exports")[0]["n"] == 0
    assert store.query("SELECT export_id FROM feedback") == [{"export_id": None}]
