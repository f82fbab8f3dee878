"""The request log and feedback store: versioned schema migrations, PII masked before storage.

SQLite (a file) is the embedded default; a `postgresql://` URL selects PostgreSQL. Every
write is one short transaction, so concurrent requests and feedback posts never lose or
duplicate a row, and an export marks exactly the rows it wrote."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from tasks.data.pii import mask_text

# Append only: a deployed database has run every migration before the last one it records.
# Written in the SQL both SQLite and PostgreSQL accept; `:name` placeholders throughout.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE requests (
        request_id TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        model_name TEXT NOT NULL,
        model_version TEXT NOT NULL,
        route TEXT NOT NULL,
        user_id TEXT,
        prompt TEXT NOT NULL,
        response TEXT,
        params TEXT NOT NULL,
        tokens INTEGER NOT NULL DEFAULT 0,
        latency_ms REAL NOT NULL,
        cached INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
        error TEXT
    );
    CREATE INDEX requests_version ON requests (model_version, created_at);
    CREATE TABLE feedback (
        feedback_id TEXT PRIMARY KEY,
        request_id TEXT NOT NULL REFERENCES requests (request_id),
        model_version TEXT NOT NULL,
        created_at TEXT NOT NULL,
        rating INTEGER CHECK (rating BETWEEN 1 AND 5),
        thumbs TEXT CHECK (thumbs IN ('up', 'down')),
        positive INTEGER NOT NULL CHECK (positive IN (0, 1)),
        comment TEXT
    );
    CREATE INDEX feedback_request ON feedback (request_id);
    CREATE INDEX feedback_version ON feedback (model_version, created_at);
    """,
    """
    CREATE TABLE feedback_exports (
        export_id TEXT PRIMARY KEY,
        dag_run_id TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        uri TEXT NOT NULL,
        row_count INTEGER NOT NULL,
        min_rating INTEGER NOT NULL,
        consumed_by TEXT
    );
    ALTER TABLE feedback ADD COLUMN export_id TEXT REFERENCES feedback_exports (export_id);
    CREATE INDEX feedback_export ON feedback (export_id);
    """,
    """
    CREATE INDEX requests_user ON requests (user_id);
    CREATE INDEX requests_created ON requests (created_at);
    CREATE INDEX feedback_created ON feedback (created_at);
    CREATE TABLE erasures (
        erasure_id TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('user', 'retention')),
        requests_deleted INTEGER NOT NULL,
        feedback_deleted INTEGER NOT NULL,
        exports_changed TEXT NOT NULL,
        trained_in TEXT NOT NULL
    );
    """,
)
# Held while migrating PostgreSQL, so two servers starting together migrate once.
PG_MIGRATION_LOCK = 7_246_001
# Held by exports, erasures and purges on PostgreSQL: an export never writes a row that an
# erasure deletes in the same moment (SQLite's write transactions are serial already).
PG_ROWS_LOCK = 7_246_002


def now() -> str:
    """UTC timestamps as fixed-width ISO text: they sort and compare as strings."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class RequestRecord:
    request_id: str
    model_name: str
    model_version: str
    route: str
    user_id: str | None
    prompt: str
    response: str | None
    params: dict[str, Any]
    tokens: int
    latency_ms: float
    cached: bool
    status: str
    error: str | None = None


@dataclass(frozen=True)
class FeedbackRecord:
    feedback_id: str
    request_id: str
    rating: int | None
    thumbs: str | None
    comment: str | None

    @property
    def positive(self) -> bool:
        return self.thumbs == "up" if self.thumbs else (self.rating or 0) >= 4


@dataclass(frozen=True)
class Export:
    export_id: str
    dag_run_id: str
    uri: str
    row_count: int
    created: bool  # False: an earlier attempt of the same run made it


@dataclass(frozen=True)
class Erasure:
    """What an erasure or a retention purge did, with nothing personal in it: counts, the
    exports whose files changed, and the lifecycle runs that had already trained on erased
    rows (their models cannot unlearn them: lineage names the versions)."""

    erasure_id: str
    created_at: str
    kind: str  # "user" or "retention"
    requests_deleted: int
    feedback_deleted: int
    exports_changed: tuple[str, ...]
    trained_in: tuple[str, ...]


class UnknownRequest(KeyError):
    """Feedback names a request this store never served."""


class FeedbackConflict(ValueError):
    """A feedback id was reused for a different request."""


class FeedbackLimit(ValueError):
    """A request already holds as much feedback as one request may."""


class Stored(NamedTuple):
    row: dict[str, Any]
    created: bool  # False: a retried post of a stored feedback id
    first: bool  # the request's first feedback row


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


class FeedbackStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = is_postgres(url)
        self._lock = threading.Lock()
        if self.postgres:
            import psycopg2

            self._db = psycopg2.connect(url)
        else:
            path = url.removeprefix("sqlite:///")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                       timeout=30)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
        self.migrate()

    def _sql(self, statement: str) -> str:
        return re.sub(r"(?<!:):(\w+)", r"%(\1)s", statement) if self.postgres else statement

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Callable[..., Any]]:
        """One transaction; yields run(sql, params) -> cursor."""
        with self._lock:
            if self.postgres:
                from psycopg2.extras import RealDictCursor

                cursor = self._db.cursor(cursor_factory=RealDictCursor)
            else:
                cursor = self._db.cursor()
                cursor.execute("BEGIN IMMEDIATE")

            def run(statement: str, params: dict[str, Any] | None = None) -> Any:
                cursor.execute(self._sql(statement), params or {})
                return cursor

            try:
                yield run
                if self.postgres:
                    self._db.commit()
                else:
                    cursor.execute("COMMIT")
            except BaseException:
                if self.postgres:
                    self._db.rollback()
                else:
                    cursor.execute("ROLLBACK")
                raise
            finally:
                cursor.close()

    def migrate(self) -> int:
        """Apply pending migrations, each in its own transaction; returns the schema version."""
        with self._tx() as run:
            if self.postgres:
                run(f"SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK})")
            run("CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        for version, script in enumerate(MIGRATIONS, start=1):
            with self._tx() as run:
                if self.postgres:
                    run(f"SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK})")
                done = run("SELECT COUNT(*) AS n FROM schema_migrations WHERE version = "
                           ":version", {"version": version}).fetchone()
                if (done["n"] if self.postgres else done[0]) > 0:
                    continue
                for statement in (s for s in script.split(";") if s.strip()):
                    run(statement)
                run("INSERT INTO schema_migrations VALUES (:version, :at)",
                    {"version": version, "at": now()})
        return len(MIGRATIONS)

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self._tx() as run:
            return [dict(r) for r in run(sql, params).fetchall()]

    def log_request(self, record: RequestRecord) -> None:
        row = asdict(record) | {
            "prompt": mask_text(record.prompt),
            "response": mask_text(record.response) if record.response is not None else None,
            "params": json.dumps(record.params, sort_keys=True),
            "cached": int(record.cached),
            "created_at": now(),
        }
        columns = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        with self._tx() as run:
            run(f"INSERT INTO requests ({columns}) VALUES ({marks})", row)

    def add_feedback(self, record: FeedbackRecord, max_per_request: int = 0) -> Stored:
        """Store one feedback row; the same feedback id twice stores it once. A request
        takes at most `max_per_request` rows (0: no limit); `first` tells whether the row
        is its request's first, the one verdict a rollout counts for it."""
        with self._tx() as run:
            # Locks the request's row on PostgreSQL, so replicas agree on which is first.
            served = run("SELECT model_version FROM requests WHERE request_id = :id"
                         + (" FOR UPDATE" if self.postgres else ""),
                         {"id": record.request_id}).fetchone()
            if served is None:
                raise UnknownRequest(record.request_id)
            earlier = run("SELECT * FROM feedback WHERE feedback_id = :id",
                          {"id": record.feedback_id}).fetchone()
            if earlier is not None:
                return self._retried(dict(earlier), record)
            count = run("SELECT COUNT(*) AS n FROM feedback WHERE request_id = :id",
                        {"id": record.request_id}).fetchone()["n"]
            if max_per_request and count >= max_per_request:
                raise FeedbackLimit(f"request_id: {record.request_id} already holds {count} "
                                    f"feedback (the limit is {max_per_request} a request)")
            # Another request's post of the same id may commit meanwhile (other replica).
            created = run(
                "INSERT INTO feedback (feedback_id, request_id, model_version, created_at, "
                "rating, thumbs, positive, comment) VALUES (:feedback_id, :request_id, "
                ":version, :at, :rating, :thumbs, :positive, :comment) "
                "ON CONFLICT (feedback_id) DO NOTHING",
                {"feedback_id": record.feedback_id, "request_id": record.request_id,
                 "version": served["model_version"], "at": now(), "rating": record.rating,
                 "thumbs": record.thumbs, "positive": int(record.positive),
                 "comment": mask_text(record.comment) if record.comment else None},
            ).rowcount == 1
            row = dict(run("SELECT * FROM feedback WHERE feedback_id = :id",
                           {"id": record.feedback_id}).fetchone())
        return Stored(row, True, count == 0) if created else self._retried(row, record)

    @staticmethod
    def _retried(row: dict[str, Any], record: FeedbackRecord) -> Stored:
        if row["request_id"] != record.request_id:
            raise FeedbackConflict(f"feedback_id: {record.feedback_id!r} already holds feedback "
                                   f"for request {row['request_id']}")
        return Stored(row, False, False)

    def export_feedback(self, dag_run_id: str, min_rating: int,
                        write: Callable[[list[dict[str, Any]]], str]) -> Export:
        """Snapshot the well-rated feedback no export holds yet: `write(rows)` stores them
        and returns a URI; the rows are marked with the export in the same transaction, so
        no row is exported (and trained on) twice. A retried run gets its first export."""
        with self._tx() as run:
            self._lock_rows(run)
            earlier = run("SELECT * FROM feedback_exports WHERE dag_run_id = :run",
                          {"run": dag_run_id}).fetchone()
            if earlier is not None:
                e = dict(earlier)
                return Export(e["export_id"], dag_run_id, e["uri"], e["row_count"], False)
            rows = [dict(r) for r in run(
                "SELECT f.feedback_id, f.request_id, f.model_version, f.rating, f.thumbs, "
                "r.prompt, r.response FROM feedback f JOIN requests r ON r.request_id = "
                "f.request_id WHERE f.export_id IS NULL AND r.status = 'ok' AND "
                "(f.thumbs = 'up' OR f.rating >= :min_rating) ORDER BY f.created_at, "
                "f.feedback_id", {"min_rating": min_rating}).fetchall()]
            export_id = uuid.uuid4().hex
            uri = write(rows)
            run("INSERT INTO feedback_exports (export_id, dag_run_id, created_at, uri, "
                "row_count, min_rating) VALUES (:id, :run, :at, :uri, :n, :min_rating)",
                {"id": export_id, "run": dag_run_id, "at": now(), "uri": uri, "n": len(rows),
                 "min_rating": min_rating})
            for row in rows:
                run("UPDATE feedback SET export_id = :export WHERE feedback_id = :id",
                    {"export": export_id, "id": row["feedback_id"]})
        return Export(export_id, dag_run_id, uri, len(rows), True)

    def _lock_rows(self, run: Callable[..., Any]) -> None:
        if self.postgres:
            run(f"SELECT pg_advisory_xact_lock({PG_ROWS_LOCK})")

    def erase_user(self, user_ref: str, rewrite: Callable[[str, set[str]], None]) -> Erasure:
        """Delete every request of the user stored as `user_ref` and all feedback on them, in
        one transaction. An export not yet trained on loses the user's rows too
        (`rewrite(uri, feedback_ids)` rewrites its file without them), so no future training
        sees them; exports already trained on are named by the lifecycle runs that used
        them. A failure deletes nothing from the store (an export file rewritten before it
        stays rewritten; running the erasure again finishes it)."""
        with self._tx() as run:
            self._lock_rows(run)
            requests = [r["request_id"] for r in map(dict, run(
                "SELECT request_id FROM requests WHERE user_id = :ref",
                {"ref": user_ref}).fetchall())]
            rows = [dict(r) for r in run(
                "SELECT f.feedback_id, f.export_id, e.uri, e.consumed_by FROM feedback f JOIN "
                "requests r ON r.request_id = f.request_id LEFT JOIN feedback_exports e ON "
                "e.export_id = f.export_id WHERE r.user_id = :ref", {"ref": user_ref})]
            pending: dict[tuple[str, str], set[str]] = {}
            for row in rows:
                if row["export_id"] and not row["consumed_by"]:
                    pending.setdefault((row["export_id"], row["uri"]), set()).add(
                        row["feedback_id"])
            for (export_id, uri), ids in pending.items():
                rewrite(uri, ids)
                run("UPDATE feedback_exports SET row_count = row_count - :n WHERE export_id = "
                    ":id", {"n": len(ids), "id": export_id})
            for row in rows:
                run("DELETE FROM feedback WHERE feedback_id = :id", {"id": row["feedback_id"]})
            for request_id in requests:
                run("DELETE FROM requests WHERE request_id = :id", {"id": request_id})
            trained = {row["consumed_by"] for row in rows if row["consumed_by"]}
            return self._record(run, "user", len(requests), len(rows),
                                sorted(e for e, _ in pending), sorted(trained))

    def purge_before(self, cutoff: str, remove: Callable[[str], None]) -> Erasure:
        """Retention: delete requests and feedback created before `cutoff` (an ISO time),
        except the rows an export not yet trained on holds (and their requests), and the
        files of exports trained on before it (`remove(uri)`)."""
        with self._tx() as run:
            self._lock_rows(run)
            old_exports = [dict(r) for r in run(
                "SELECT export_id, uri FROM feedback_exports WHERE created_at < :cutoff AND "
                "consumed_by IS NOT NULL AND uri <> ''", {"cutoff": cutoff}).fetchall()]
            feedback = run(
                "DELETE FROM feedback WHERE created_at < :cutoff AND (export_id IS NULL OR "
                "export_id IN (SELECT export_id FROM feedback_exports WHERE consumed_by IS "
                "NOT NULL))", {"cutoff": cutoff}).rowcount
            requests = run(
                "DELETE FROM requests WHERE created_at < :cutoff AND NOT EXISTS (SELECT 1 FROM "
                "feedback f WHERE f.request_id = requests.request_id)",
                {"cutoff": cutoff}).rowcount
            for export in old_exports:
                remove(export["uri"])
                run("UPDATE feedback_exports SET uri = '' WHERE export_id = :id",
                    {"id": export["export_id"]})
            return self._record(run, "retention", requests, feedback,
                                [e["export_id"] for e in old_exports], [])

    @staticmethod
    def _record(run: Callable[..., Any], kind: str, requests: int, feedback: int,
                exports: list[str], trained: list[str]) -> Erasure:
        erasure = Erasure(uuid.uuid4().hex, now(), kind, requests, feedback, tuple(exports),
                          tuple(trained))
        run("INSERT INTO erasures VALUES (:erasure_id, :created_at, :kind, :requests_deleted, "
            ":feedback_deleted, :exports_changed, :trained_in)",
            asdict(erasure) | {"exports_changed": json.dumps(exports),
                               "trained_in": json.dumps(trained)})
        return erasure

    def mark_consumed(self, export_id: str, lifecycle_run_id: str) -> None:
        """Record which lifecycle run trained on an export (lineage); set once."""
        with self._tx() as run:
            run("UPDATE feedback_exports SET consumed_by = :run WHERE export_id = :id AND "
                "(consumed_by IS NULL OR consumed_by = :run)",
                {"run": lifecycle_run_id, "id": export_id})

    def close(self) -> None:
        with self._lock:
            self._db.close()
