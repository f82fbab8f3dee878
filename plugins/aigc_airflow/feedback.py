"""The feedback loop in Airflow: the Asset a retrain trigger emits, the feedback DAG's tasks,
and how the lifecycle's ingest finds the snapshots that triggered it."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset

# One event per exported snapshot; `extra` carries export_id, uri and rows.
FEEDBACK_SNAPSHOTS = Asset(name="aigc_feedback_snapshots", uri="aigc://feedback/snapshots")


def triggering_exports(context: dict[str, Any]) -> list[dict[str, Any]]:
    """The feedback exports whose Asset events started this run (none for cron/manual)."""
    events = context.get("triggering_asset_events") or {}
    found = []
    for asset in events:
        if getattr(asset, "name", None) == FEEDBACK_SNAPSHOTS.name:
            found += [dict(e.extra) for e in events[asset] if e.extra.get("export_id")]
    return found


def _store():
    from tasks.feedback.store import FeedbackStore
    from tasks.settings import Settings

    return FeedbackStore(Settings.from_env().feedback_db)


def _champion(model_name: str) -> str | None:
    import mlflow

    from tasks.registry.register import champion_version
    from tasks.settings import Settings

    mlflow.set_tracking_uri(Settings.from_env().tracking_uri)
    return champion_version(mlflow.MlflowClient(), model_name)


def analyze_feedback(params: dict[str, Any]) -> dict[str, Any]:
    from tasks.config import FeedbackConfig
    from tasks.feedback.loop import analyze

    cfg = FeedbackConfig.from_dict(dict(params))
    store = _store()
    try:
        return analyze(store, _champion(cfg.model_name), cfg)
    finally:
        store.close()


def export_feedback(params: dict[str, Any], dag_run_id: str) -> dict[str, Any]:
    from dataclasses import asdict

    from tasks.config import FeedbackConfig
    from tasks.feedback.loop import export_snapshot
    from tasks.settings import Settings

    cfg = FeedbackConfig.from_dict(dict(params))
    store = _store()
    try:
        export = export_snapshot(store, Settings.from_env().artifact_root, dag_run_id,
                                 cfg.min_rating)
    finally:
        store.close()
    return asdict(export)


def purge_expired() -> dict[str, Any]:
    """Retention: requests and feedback older than AIGC_RETENTION_DAYS go (off when unset)."""
    from dataclasses import asdict

    from tasks.feedback.rights import purge, retention_days

    days = retention_days()
    store = _store()
    try:
        record = purge(store, days)
    finally:
        store.close()
    return {"retention_days": days, "purged": asdict(record) if record else None}
