"""Two-process training semantics with DDP (torchrun) and Horovod (horovodrun, gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch

from tasks.cli import run_stage
from tasks.config import LifecycleConfig
from tasks.runner import StageFailed, localize
from tasks.stage import StageContext, write_json
from tasks.train.data import batch_indices, shard
from tasks.train.launch import collect
from tasks.train.worker import rank_file
from tests.conftest import isolated_settings, train_context

LAUNCHERS = ["ddp", "horovod"]
PROBE = Path(__file__).with_name("dist_probe.py")


def _probe_argv(launcher: str, out: Path) -> list[str]:
    script = ["python", str(PROBE), launcher, str(out)]
    if launcher == "ddp":
        return ["torchrun", "--standalone", "--nproc_per_node=2", *script[1:]]
    return ["horovodrun", "-np", "2", "-H", "localhost:2", "--gloo", *script]


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_broadcast_and_gradient_averaging(launcher, tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    subprocess.run(localize(_probe_argv(launcher, tmp_path)), env=env, check=True,
                   timeout=300, capture_output=True)
    r0, r1 = (json.loads((tmp_path / f"probe-{r}.json").read_text()) for r in (0, 1))
    assert r0["size"] == r1["size"] == 2
    # Rank 1 started elsewhere; after the broadcast it holds rank 0's weights and momentum.
    assert r0["after_broadcast"] == r1["after_broadcast"]
    assert r0["momentum"] == r1["momentum"] == [[1.0] * 4]
    # Gradients were (1, 1, 1, 1) on rank 0 and (2, 2, 2, 2) on rank 1: the mean is 1.5.
    for r in (r0, r1):
        torch.testing.assert_close(torch.tensor(r["grad"]), torch.full((1, 4), 1.5))
    assert r0["after_step"] == r1["after_step"]
    assert r0["mean_of_ranks"] == r1["mean_of_ranks"] == 0.5


def test_shards_are_disjoint_and_cover_the_global_batch():
    for step in range(20):
        idx = batch_indices(step, 37, 8, 5)
        parts = [shard(idx, r, 4) for r in range(4)]
        # As a multiset: a batch that spans an epoch boundary may hold one block twice.
        assert sorted(torch.cat(parts).tolist()) == sorted(idx.tolist())
        assert all(len(p) == 2 for p in parts)
    # Within one epoch no block is drawn twice, so the ranks' shards share no block.
    parts = [set(shard(batch_indices(0, 40, 8, 5), r, 2).tolist()) for r in range(2)]
    assert not parts[0] & parts[1]


def test_collect_refuses_ranks_with_different_weights(tmp_path):
    ctx = StageContext(stage="train", dag_id="d", run_id="r", config=LifecycleConfig(
        launcher="ddp", workers=2), settings=isolated_settings(tmp_path))
    write_json(rank_file(ctx.stage_dir, 0), {"rank": 0, "checksum": "a"})
    with pytest.raises(StageFailed, match="rank 1 of 2 wrote no result"):
        collect(ctx)
    write_json(rank_file(ctx.stage_dir, 1), {"rank": 1, "checksum": "b"})
    with pytest.raises(StageFailed, match="different weights"):
        collect(ctx)


def _train_ctx(prepared, run_id: str, **overrides) -> StageContext:
    return train_context(prepared, run_id, **{"max_steps": 60, "eval_every": 1000} | overrides)


def test_launchers_agree_exactly_without_dropout(prepared):
    """Same global batch and seed, no dropout: sharding + averaging reproduce single."""
    results = {name: run_stage(_train_ctx(prepared, f"nodrop-{name}", launcher=name,
                                          dropout=0.0))
               for name in ["single", *LAUNCHERS]}
    for name in LAUNCHERS:
        assert results[name]["workers"] == 2 and results[name]["launcher"] == name
        # Float sums in a different order (two half-batches) are the only difference.
        assert results[name]["val_loss"] == pytest.approx(results["single"]["val_loss"],
                                                          rel=1e-3)


def test_launchers_reach_the_same_quality_with_dropout(prepared):
    """With dropout the masks differ per rank; held-out perplexity agrees within 3%."""
    results = {name: run_stage(_train_ctx(prepared, f"drop-{name}", launcher=name))
               for name in ["single", *LAUNCHERS]}
    base = results["single"]["val_perplexity"]
    assert base < 0.5 * results["single"]["untrained_val_perplexity"]
    for name in LAUNCHERS:
        assert results[name]["val_perplexity"] == pytest.approx(base, rel=0.03)


def test_bf16_autocast_trains_on_cpu(prepared):
    result = run_stage(_train_ctx(prepared, "bf16", launcher="single", precision="bf16"))
    assert result["precision"] == "bf16"
    assert result["val_perplexity"] < 0.5 * result["untrained_val_perplexity"]


def _rank_pid(stage: psutil.Process, rank: int) -> int | None:
    for child in stage.children(recursive=True):
        try:
            if "tasks.train.worker" not in " ".join(child.cmdline()):
                continue
            env = child.environ()
        except psutil.Error:
            continue
        if env.get("HOROVOD_RANK", env.get("RANK")) == str(rank):
            return child.pid
    return None


@pytest.mark.parametrize("launcher", [*LAUNCHERS, "fsdp"])
def test_killed_worker_fails_the_stage_and_the_retry_resumes(prepared, launcher):
    """SIGKILL one worker mid-run: the stage exits non-zero saying so; running the same
    stage again resumes from the newest checkpoint and ends like an uninterrupted run."""
    long = {"max_steps": 300, "checkpoint_every": 20, "launcher": launcher}
    reference = run_stage(_train_ctx(prepared, f"ref-{launcher}", **long))
    ctx = _train_ctx(prepared, f"kill-{launcher}", **long)
    payload = write_json(ctx.stage_dir / "payload.json", ctx.to_payload())
    argv = localize(["python", "-m", "tasks", "train", "--config", str(payload)])
    env = os.environ | ctx.settings.to_env()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    stage = psutil.Process(proc.pid)
    ckpts = ctx.stage_dir / "checkpoints"
    deadline = time.monotonic() + 240
    while not list(ckpts.glob("step-00000040")):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint at step 40 in time"
        time.sleep(0.2)
    pid = _rank_pid(stage, 1)
    assert pid is not None, "rank 1 worker not found"
    os.kill(pid, signal.SIGKILL)
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode != 0
    assert "workers exited with code" in output
    assert not (ctx.stage_dir / "result.json").exists()
    # A plain SIGKILL is not an out-of-memory death: the retry keeps the batch split.
    assert not (ctx.stage_dir / "oom.json").exists()

    resumed = run_stage(ctx)
    assert resumed["resumed_from_step"] >= 40
    assert resumed["steps"] == 300
    # Batch order and dropout masks are functions of the step: the resumed run is the
    # uninterrupted one, bit for bit.
    assert resumed["checksum"] == reference["checksum"]
    assert resumed["val_loss"] == reference["val_loss"]
