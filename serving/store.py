"""The request log and feedback store: versioned schema migrations, PII masked before storage.

SQLite (a file) is the embedded default. Every write is one short transaction behind a lock,
so concurrent requests and feedback posts never lose or duplicate a row."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.data.pii import mask_text

# Append only: a deployed database has run every migration before the last one it records.
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
)


def now() -> str:
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


class UnknownRequest(KeyError):
    """Feedback names a request this store never served."""


class FeedbackConflict(ValueError):
    """A feedback id was reused for a different request."""


class FeedbackStore:
    def __init__(self, path: str) -> None:
        self.path = path.removeprefix("sqlite:///")
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self.migrate()

    def migrate(self) -> int:
        """Apply pending migrations, each in its own transaction; returns the schema version."""
        with self._lock:
            self._db.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                             "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
            done = self._db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
                                    ).fetchone()[0]
            for version, script in enumerate(MIGRATIONS[done:], start=done + 1):
                statements = [s for s in script.split(";") if s.strip()]
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for statement in statements:
                        self._db.execute(statement)
                    self._db.execute("INSERT INTO schema_migrations VALUES (?, ?)",
                                     (version, now()))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            return len(MIGRATIONS)

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
        with self._lock:
            self._db.execute(f"INSERT INTO requests ({columns}) VALUES ({marks})", row)

    def add_feedback(self, record: FeedbackRecord) -> tuple[dict[str, Any], bool]:
        """Store one feedback row; the same feedback id twice stores it once.

        Returns the stored row and whether this call created it."""
        with self._lock:
            served = self._db.execute("SELECT model_version FROM requests WHERE request_id = ?",
                                      (record.request_id,)).fetchone()
            if served is None:
                raise UnknownRequest(record.request_id)
            created = self._db.execute(
                "INSERT INTO feedback (feedback_id, request_id, model_version, created_at, "
                "rating, thumbs, positive, comment) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (feedback_id) DO NOTHING",
                (record.feedback_id, record.request_id, served["model_version"], now(),
                 record.rating, record.thumbs, int(record.positive),
                 mask_text(record.comment) if record.comment else None),
            ).rowcount == 1
            row = dict(self._db.execute("SELECT * FROM feedback WHERE feedback_id = ?",
                                        (record.feedback_id,)).fetchone())
        if row["request_id"] != record.request_id:
            raise FeedbackConflict(f"feedback_id: {record.feedback_id!r} already holds feedback "
                                   f"for request {row['request_id']}")
        return row, created

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, params).fetchall()]

    def close(self) -> None:
        with self._lock:
            self._db.close()
