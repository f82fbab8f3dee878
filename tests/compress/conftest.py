"""A tiny trained challenger shared by the compression tests."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.cli import run_stage
from tasks.config import LifecycleConfig
from tasks.stage import StageContext
from tests.conftest import TINY, isolated_settings, prepare_demo, scratch_base

# Fast settings: short fine-tunes, a student smaller than the TINY teacher.
COMPRESS = TINY | {"launcher": "single", "max_steps": 60, "finetune_steps": 20,
                   "calibration_batches": 2, "distill_n_layer": 1, "distill_n_embd": 16,
                   "distill_steps": 30}


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(root, preprocess result, train result) of a tiny model trained on the demo sample."""
    root = tmp_path_factory.mktemp("compress")
    prep = prepare_demo(root)
    ctx = StageContext(stage="train", dag_id="d", run_id="train",
                       inputs={"preprocess": prep, "base_model": scratch_base()},
                       config=LifecycleConfig.from_dict(COMPRESS),
                       settings=isolated_settings(root))
    return root, prep, run_stage(ctx)


@pytest.fixture(scope="session")
def held_out(trained) -> list[tuple[str, str]]:
    frame = pd.read_parquet(trained[1]["splits"]["validation"])
    return list(frame[["prompt", "response"]].itertuples(index=False, name=None))
