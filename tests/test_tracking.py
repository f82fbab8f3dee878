"""The tracking store as stages meet it: several at once on a store nobody created yet."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from tests.conftest import isolated_settings


def _configure(root: str) -> str:
    from tasks.tracking import configure

    return configure(isolated_settings(Path(root)))


def test_stages_starting_together_on_a_new_sqlite_store_all_get_the_experiment(tmp_path):
    # ingest and base_model start at the same moment on a fresh laptop: each process's first
    # contact would create and migrate the store, and all but one used to fail.
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        ids = pool.map(_configure, [str(tmp_path)] * 3)
    assert len(set(ids)) == 1, ids
