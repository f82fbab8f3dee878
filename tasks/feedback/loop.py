"""The feedback DAG's work: statistics from the store, and the dataset snapshot of new
feedback that a retrain trains on."""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.config import FeedbackConfig
from tasks.data.source import guess_language
from tasks.feedback.policy import FeedbackStats, RetrainDecision, retrain_needed
from tasks.feedback.store import Export, FeedbackStore
from tasks.stage import atomic_path, safe_name
from tasks.text import distinct_n

log = logging.getLogger(__name__)
USABLE = "(f.thumbs = 'up' OR f.rating >= :min_rating)"


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def _window(store: FeedbackStore, version: str, start: datetime, end: datetime,
            ) -> tuple[int, int, list[str]]:
    """(feedback, negative feedback, fresh responses) of one version in [start, end)."""
    span = {"v": version, "start": _iso(start), "end": _iso(end)}
    fb = store.query("SELECT COUNT(*) AS n, COALESCE(SUM(1 - positive), 0) AS neg FROM "
                     "feedback WHERE model_version = :v AND created_at >= :start AND "
                     "created_at < :end", span)[0]
    responses = [r["response"] for r in store.query(
        "SELECT response FROM requests WHERE model_version = :v AND status = 'ok' AND "
        "cached = 0 AND created_at >= :start AND created_at < :end", span)]
    return int(fb["n"]), int(fb["neg"]), responses


def last_trigger(store: FeedbackStore) -> datetime | None:
    row = store.query("SELECT MAX(created_at) AS at FROM feedback_exports")[0]
    return datetime.fromisoformat(row["at"]) if row["at"] else None


def collect_stats(store: FeedbackStore, champion: str | None, cfg: FeedbackConfig,
                  at: datetime) -> FeedbackStats:
    new = store.query("SELECT COUNT(*) AS n FROM feedback f JOIN requests r ON r.request_id = "
                      f"f.request_id WHERE f.export_id IS NULL AND r.status = 'ok' AND {USABLE}",
                      {"min_rating": cfg.min_rating})[0]["n"]
    recent_start = at - timedelta(hours=cfg.window_hours)
    baseline_start = recent_start - timedelta(hours=cfg.baseline_hours)
    recent = _window(store, champion, recent_start, at) if champion else (0, 0, [])
    baseline = _window(store, champion, baseline_start, recent_start) if champion else (0, 0, [])
    last = last_trigger(store)
    return FeedbackStats(
        champion=champion, new_usable=int(new),
        recent_feedback=recent[0], recent_negative=recent[1],
        baseline_feedback=baseline[0], baseline_negative=baseline[1],
        recent_responses=len(recent[2]), recent_diversity=distinct_n(recent[2], 2),
        baseline_responses=len(baseline[2]), baseline_diversity=distinct_n(baseline[2], 2),
        hours_since_last_trigger=(at - last).total_seconds() / 3600 if last else None)


def analyze(store: FeedbackStore, champion: str | None, cfg: FeedbackConfig,
            at: datetime | None = None) -> dict[str, Any]:
    stats = collect_stats(store, champion, cfg, at or datetime.now(UTC))
    decision: RetrainDecision = retrain_needed(stats, cfg)
    log.info("feedback stats %s -> retrain=%s: %s", stats, decision.retrain,
             "; ".join(decision.reasons))
    return {"stats": asdict(stats), "retrain": decision.retrain,
            "reasons": list(decision.reasons)}


def export_snapshot(store: FeedbackStore, root: Path, dag_run_id: str, min_rating: int,
                    ) -> Export:
    """Write the new well-rated pairs as a Parquet dataset (prompt, response, language and
    their provenance) and mark them exported; a retried run returns its first export."""
    target = root / "aigc_feedback" / safe_name(dag_run_id) / "feedback.parquet"

    def write(rows: list[dict[str, Any]]) -> str:
        frame = pd.DataFrame(rows, columns=["feedback_id", "request_id", "model_version",
                                            "rating", "thumbs", "prompt", "response"])
        frame["language"] = frame["prompt"].map(guess_language)
        with atomic_path(target) as tmp:
            frame.to_parquet(tmp, index=False)
        return str(target)

    export = store.export_feedback(dag_run_id, min_rating, write)
    log.info("export %s: %d rows -> %s (%s)", export.export_id, export.row_count, export.uri,
             "new" if export.created else "from an earlier attempt")
    return export
