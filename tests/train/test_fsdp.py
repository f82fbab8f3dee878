"""FSDP2 on two CPU processes: the DDP trajectory at half the state per rank, and sharded
checkpoints a retry resumes from, at the same or another world size."""

from __future__ import annotations

import json
import shutil

import mlflow
import pytest

from tasks.cli import run_stage
from tasks.stage import StageContext
from tasks.train.worker import rank_file
from tests.conftest import train_context


def _ctx(prepared, run_id: str, **overrides) -> StageContext:
    return train_context(prepared, run_id, **{"max_steps": 60, "eval_every": 1000,
                                              "dropout": 0.0, "workers": 2} | overrides)


def _ranks(ctx: StageContext) -> list[dict]:
    return [json.loads(rank_file(ctx.stage_dir, r).read_text()) for r in range(2)]


def _train_losses(run_id: str) -> list[float]:
    run = mlflow.search_runs(search_all_experiments=True, output_format="list",
                             filter_string=f"tags.`aigc.stage` = 'train' and "
                                           f"tags.`aigc.dag_run_id` = '{run_id}'")[0]
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train_loss")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


CONF = {"checkpoint_every": 20}


@pytest.fixture(scope="module")
def runs(prepared):
    """(ctx, result) of the same 60 steps with DDP and with FSDP."""
    out = {}
    for launcher in ("ddp", "fsdp"):
        ctx = _ctx(prepared, launcher, launcher=launcher, **CONF)
        out[launcher] = ctx, run_stage(ctx)
    return out


def test_fsdp_follows_ddp_with_half_the_state_per_rank(runs):
    (ddp_ctx, ddp), (fsdp_ctx, fsdp) = runs["ddp"], runs["fsdp"]
    assert fsdp["launcher"] == "fsdp" and fsdp["workers"] == 2
    assert fsdp["val_loss"] == pytest.approx(ddp["val_loss"], rel=1e-4)
    assert _train_losses("fsdp") == pytest.approx(_train_losses("ddp"), rel=1e-4)
    for sharded, replicated in zip(_ranks(fsdp_ctx), _ranks(ddp_ctx), strict=True):
        held = sharded["param_bytes"] + sharded["optimizer_bytes"]
        full = replicated["param_bytes"] + replicated["optimizer_bytes"]
        assert 0.45 < held / full < 0.6, (held, full)


def test_a_sharded_checkpoint_resumes_at_another_world_size(prepared, runs):
    reference = runs["fsdp"][1]
    ctx = _ctx(prepared, "fsdp-resize", launcher="fsdp", **CONF)
    run_stage(ctx)
    ckpts = ctx.stage_dir / "checkpoints"
    assert (ckpts / "step-00000040" / "sharded" / ".metadata").is_file()
    shutil.rmtree(ckpts / "step-00000060")
    shutil.rmtree(ctx.stage_dir / "model")
    # The retry gets one process instead of two: the same global batch, resharded state.
    resumed = run_stage(_ctx(prepared, "fsdp-resize", launcher="fsdp", workers=1, **CONF))
    assert resumed["resumed_from_step"] == 40 and resumed["workers"] == 1
    assert resumed["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-4)
