"""Ingest: read the source dataset and write a content-addressed Parquet snapshot."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from tasks.data.source import content_hash, read_source
from tasks.stage import StageContext, atomic_path
from tasks.tracking import stage_run

log = logging.getLogger(__name__)


def sample_rows(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """A seeded sample keeps every language represented, unlike a head(); order is kept."""
    if not max_rows or len(frame) <= max_rows:
        return frame
    return frame.sample(n=max_rows, random_state=seed).sort_index().reset_index(drop=True)


def write_parquet(frame: pd.DataFrame, target) -> None:
    with atomic_path(target) as tmp:
        frame.to_parquet(tmp, index=False)


def run(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.config
    frame = read_source(cfg.dataset_uri, tuple(cfg.languages), ctx.settings.allowed_roots)
    frame = sample_rows(frame, cfg.max_rows, cfg.seed)
    digest = content_hash(frame)
    snapshot = ctx.stage_dir / f"dataset-{digest[:16]}.parquet"
    write_parquet(frame, snapshot)
    log.info("ingested %d rows from %s -> %s (sha256 %s)", len(frame), cfg.dataset_uri,
             snapshot, digest)
    result = {"dataset_uri": str(snapshot), "rows": len(frame), "dataset_hash": digest,
              "source_uri": cfg.dataset_uri,
              "languages": {k: int(v) for k, v in frame["language"].value_counts().items()}}
    with stage_run(ctx) as run_:
        run_.log_params({"source_uri": cfg.dataset_uri, "rows": len(frame)})
        run_.set_tags({"aigc.dataset_hash": digest}, parent=True)
    return result
