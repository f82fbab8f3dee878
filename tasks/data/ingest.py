"""Ingest: read the source dataset and write a content-addressed Parquet snapshot."""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Any

import pandas as pd

from tasks.config import LifecycleConfig
from tasks.data.pii import mask_text
from tasks.data.source import COLUMNS, DISALLOWED_CHARS, ORIGIN, content_hash, read_source
from tasks.stage import StageContext, atomic_path
from tasks.tracking import stage_run

log = logging.getLogger(__name__)


def sample_rows(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """A seeded sample keeps every language represented, unlike a head(); order is kept."""
    if not max_rows or len(frame) <= max_rows:
        return frame
    return frame.sample(n=max_rows, random_state=seed).sort_index().reset_index(drop=True)


TEXT_COLUMNS = ("prompt", "response")


def mask_frame(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The frame with PII in its texts masked, and how many spans of each kind were."""
    counts: Counter[str] = Counter()
    masked = frame.copy()
    for col in TEXT_COLUMNS:
        masked[col] = [mask_text(v, counts) if isinstance(v, str) else v for v in masked[col]]
    return masked, dict(counts)


def write_parquet(frame: pd.DataFrame, target) -> None:
    with atomic_path(target) as tmp:
        frame.to_parquet(tmp, index=False)


def _unfit(prompt: str, response: str, cfg: LifecycleConfig) -> str | None:
    """Why a feedback pair would fail the validation gate (which judges the whole dataset,
    so one broken answer must not fail the run): None when it is fit to train on."""
    texts = (prompt or "", response or "")
    if any(not cfg.min_chars <= len(t) <= cfg.max_chars for t in texts):
        return "length"
    if any(re.search(DISALLOWED_CHARS, t) for t in texts):
        return "characters"  # e.g. a half-decoded multi-byte character in a model answer
    return None


def _export_rows(export: dict[str, Any]) -> pd.DataFrame:
    """One feedback snapshot's rows, each named by where it is in that snapshot."""
    frame = pd.read_parquet(export["uri"])
    return frame.assign(**{ORIGIN: [f"feedback export {export['export_id']} row {i}"
                                    for i in range(1, len(frame) + 1)]})


def feedback_rows(exports: list[dict[str, Any]], corpus: pd.DataFrame, cfg: LifecycleConfig,
                  ) -> tuple[pd.DataFrame, dict[str, int]]:
    """The pairs of the feedback snapshots that triggered this run, minus those unfit to
    train on, by reason (they stay in the store and the snapshot)."""
    frames = [_export_rows(e) for e in exports]
    rows = (pd.concat(frames, ignore_index=True) if frames
            else pd.DataFrame(columns=[*COLUMNS, ORIGIN]))
    seen = set(zip(corpus["prompt"], corpus["response"], strict=True))
    kept, dropped = [], Counter()
    for row in rows.itertuples(index=False):
        reason = ("language" if row.language not in cfg.languages
                  else "duplicate" if (row.prompt, row.response) in seen
                  else _unfit(row.prompt, row.response, cfg))
        if reason:
            dropped[reason] += 1
            continue
        seen.add((row.prompt, row.response))
        kept.append({c: getattr(row, c) for c in (*COLUMNS, ORIGIN)})
    if dropped:
        log.warning("feedback: %d of %d rows not used: %s", sum(dropped.values()), len(rows),
                    dict(dropped))
    return pd.DataFrame(kept, columns=[*COLUMNS, ORIGIN]), dict(dropped)


def run(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.config
    frame = read_source(cfg.dataset_uri, cfg.languages, ctx.settings.allowed_roots)
    frame = sample_rows(frame, cfg.max_rows, cfg.seed)
    # Masked before anything is written: the snapshot, its hash, every later stage and every
    # artifact of the run only ever see the masked text.
    frame, pii = mask_frame(frame)
    # Feedback rows (masked when they were stored) are added after sampling: max_rows never
    # drops what users rated.
    exports = ctx.inputs.get("feedback", {}).get("exports", [])
    extra, dropped = feedback_rows(exports, frame, cfg)
    frame = pd.concat([frame, extra], ignore_index=True) if len(extra) else frame
    digest = content_hash(frame)
    snapshot = ctx.stage_dir / f"dataset-{digest[:16]}.parquet"
    write_parquet(frame, snapshot)
    log.info("ingested %d rows from %s -> %s (sha256 %s); PII spans masked: %s", len(frame),
             cfg.dataset_uri, snapshot, digest, pii or "none")
    result = {"dataset_uri": str(snapshot), "rows": len(frame), "dataset_hash": digest,
              "pii_masked": pii,
              "source_uri": cfg.dataset_uri,
              "languages": {k: int(v) for k, v in frame["language"].value_counts().items()},
              "feedback": {"exports": [e["export_id"] for e in exports], "rows": len(extra),
                           "dropped": dropped}}
    with stage_run(ctx) as run_:
        run_.log_params({"source_uri": cfg.dataset_uri, "rows": len(frame),
                         "feedback_rows": len(extra)})
        run_.log_metrics({"pii_masked": sum(pii.values())})
        run_.set_tags({"aigc.dataset_hash": digest, "aigc.feedback_exports":
                       ",".join(e["export_id"] for e in exports) or "none"}, parent=True)
    if exports:
        _mark_consumed(ctx, [e["export_id"] for e in exports])
    return result


def _mark_consumed(ctx: StageContext, export_ids: list[str]) -> None:
    """Lineage: these snapshots trained in this run (a retried ingest records the same)."""
    from tasks.feedback.store import FeedbackStore

    store = FeedbackStore(ctx.settings.feedback_db)
    try:
        for export_id in export_ids:
            store.mark_consumed(export_id, ctx.run_id)
    finally:
        store.close()
