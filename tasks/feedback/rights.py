"""Data rights over the request and feedback store: a user's erasure and the retention purge.

    python -m tasks.feedback erase --user ID [--json]
    python -m tasks.feedback purge [--days N] [--json]

Erasure finds a user's rows through the keyed hash the server stores instead of the id
(tasks.feedback.identity), deletes them, takes them out of every export not yet trained on,
and answers which registered model versions were already trained on them. Both write an
erasure record without personal data (the `erasures` table)."""

from __future__ import annotations

import os
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tasks.errors import BadInput
from tasks.feedback.identity import user_ref
from tasks.feedback.store import Erasure, FeedbackStore
from tasks.stage import atomic_path

RETENTION_ENV = "AIGC_RETENTION_DAYS"


def rewrite_export(uri: str, feedback_ids: set[str]) -> None:
    """An export's file without the given feedback rows (written whole, then swapped in)."""
    import pandas as pd

    frame = pd.read_parquet(uri)
    with atomic_path(Path(uri)) as tmp:
        frame[~frame["feedback_id"].isin(feedback_ids)].to_parquet(tmp, index=False)


def remove_export(uri: str) -> None:
    Path(uri).unlink(missing_ok=True)


def trained_versions(tracking_uri: str, runs: tuple[str, ...]) -> list[dict[str, str]]:
    """The registered model versions built by the given lifecycle runs."""
    if not runs:
        return []
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    found = []
    for run_id in runs:
        for mv in client.search_model_versions(f"tags.`aigc.dag_run_id` = '{run_id}'"):
            found.append({"model": mv.name, "version": str(mv.version), "dag_run_id": run_id,
                          "role": mv.tags.get("aigc.role", "")})
    return found


def erase(store: FeedbackStore, user_id: str, key: bytes, tracking_uri: str,
          ) -> dict[str, Any]:
    if not user_id.strip():
        raise BadInput("user: an empty user id names nobody")
    record = store.erase_user(user_ref(user_id, key), rewrite_export)
    return asdict(record) | {"trained_versions": trained_versions(tracking_uri,
                                                                  record.trained_in)}


def retention_days(env: dict[str, str] | None = None) -> float:
    """AIGC_RETENTION_DAYS: how long requests and feedback are kept (0 or unset: forever)."""
    raw = (os.environ if env is None else env).get(RETENTION_ENV, "").strip() or "0"
    try:
        days = float(raw)
    except ValueError:
        raise BadInput(f"{RETENTION_ENV}: {raw!r} is not a number of days") from None
    if days < 0:
        raise BadInput(f"{RETENTION_ENV}: {days:g} is negative")
    return days


def purge(store: FeedbackStore, days: float, at: datetime | None = None) -> Erasure | None:
    """Delete what is older than `days` (None when retention is off)."""
    if not days:
        return None
    cutoff = (at or datetime.now(UTC)) - timedelta(days=days)
    return store.purge_before(cutoff.isoformat(timespec="microseconds"), remove_export)
