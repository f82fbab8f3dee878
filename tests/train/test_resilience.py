"""Self-healing training: gradient accumulation keeps the trajectory, an out-of-memory death
is retried with half the micro-batch, and SIGTERM checkpoints the step in flight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tasks.cli import run_stage
from tasks.config import LifecycleConfig
from tasks.errors import BadInput
from tasks.runner import StageFailed, localize
from tasks.stage import write_json
from tasks.train.loop import OOM_TEST_ENV
from tasks.train.oom import OOM_FILE, after_oom, attempts, note_oom, oom_kills
from tests.conftest import TINY, train_context

# No dropout: the split is then the only difference from the reference (float sums).
EXACT = {"dropout": 0.0, "max_steps": 40, "eval_every": 1000}


@pytest.fixture(scope="module")
def reference(prepared):
    return run_stage(train_context(prepared, "reference", launcher="single", **EXACT))


@pytest.mark.parametrize(("launcher", "limit"), [("single", 4), ("horovod", 2)])
def test_an_out_of_memory_death_is_retried_with_half_the_micro_batch(
        prepared, reference, monkeypatch, launcher, limit):
    # Micro-batches over `limit` sequences die at step 25 (after the checkpoint at 20):
    # single has 8 a pass, each Horovod worker 4.
    monkeypatch.setenv(OOM_TEST_ENV, f"25:{limit}")
    ctx = train_context(prepared, f"oom-{launcher}", launcher=launcher, **EXACT)
    with pytest.raises(StageFailed):
        run_stage(ctx)
    [noted] = attempts(ctx.stage_dir)
    assert noted["grad_accumulation"] == 1 and noted["micro_batch"] == 2 * limit
    assert "OutOfMemoryError" in noted["how"] and "step 25" in noted["how"]
    retried = run_stage(ctx)
    assert (retried["grad_accumulation"], retried["oom_retries"]) == (2, 1)
    assert retried["resumed_from_step"] == 20 and retried["steps"] == 40
    assert retried["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-3)


def test_accumulation_follows_the_unsplit_trajectory(prepared, reference):
    split = run_stage(train_context(prepared, "split", launcher="single", grad_accumulation=4,
                                    **EXACT))
    assert split["grad_accumulation"] == 4 and split["oom_retries"] == 0
    assert split["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-4)


def test_a_micro_batch_of_one_that_ran_out_is_bad_input(tmp_path):
    cfg = LifecycleConfig.from_dict(TINY | {"launcher": "single", "batch_size": 2})
    assert after_oom(tmp_path, cfg) == cfg  # nothing noted: as configured
    note_oom(tmp_path, cfg, "CUDA out of memory")
    halved = after_oom(tmp_path, cfg)
    assert (halved.grad_accumulation, halved.micro_batch) == (2, 1)
    note_oom(tmp_path, halved, "CUDA out of memory")
    with pytest.raises(BadInput, match="batch_size: out of memory with micro-batches of 1 "):
        after_oom(tmp_path, cfg)
    assert len(json.loads((tmp_path / OOM_FILE).read_text())) == 2


def test_the_kernels_oom_kills_are_read_from_the_cgroup(tmp_path):
    v2, v1 = tmp_path / "memory.events", tmp_path / "memory.oom_control"
    v2.write_text("low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\noom_group_kill 0\n")
    v1.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 7\n")
    assert oom_kills((v2, v1)) == 2
    assert oom_kills((tmp_path / "absent", v1)) == 7
    assert oom_kills((tmp_path / "absent",)) is None


def _progress_step(ctx) -> int:
    path = ctx.stage_dir / "progress.json"
    try:
        return json.loads(path.read_text())["step"]
    except (OSError, ValueError):
        return 0


@pytest.mark.parametrize("launcher", ["single", "ddp"])
def test_sigterm_checkpoints_the_step_in_flight_and_the_retry_resumes_there(
        prepared, launcher):
    long = {"max_steps": 150, "checkpoint_every": 1000, "eval_every": 1000,
            "launcher": launcher}
    reference = run_stage(train_context(prepared, f"ref-term-{launcher}", **long))
    ctx = train_context(prepared, f"term-{launcher}", **long)
    payload = write_json(ctx.stage_dir / "payload.json", ctx.to_payload())
    proc = subprocess.Popen(localize(["python", "-m", "tasks", "train", "--config",
                                      str(payload)]),
                            env=os.environ | ctx.settings.to_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while (seen := _progress_step(ctx)) < 30:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "training did not reach step 30 in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    [checkpoint] = (ctx.stage_dir / "checkpoints").glob("step-*")
    stopped = int(checkpoint.name.removeprefix("step-"))
    # The only checkpoint is the one SIGTERM wrote, at most a step after what was seen.
    assert seen <= stopped < 150, output[-2000:]
    assert f"stopped by SIGTERM at step {stopped}" in output
    resumed = run_stage(ctx)
    assert resumed["resumed_from_step"] == stopped and resumed["steps"] == 150
    if launcher == "single":
        # The stopped part ran in its own process, the rest and the reference in this one,
        # with other BLAS thread counts: equal up to float rounding.
        assert resumed["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-4)
    else:  # every part in worker processes alike: bit for bit
        assert resumed["checksum"] == reference["checksum"]
