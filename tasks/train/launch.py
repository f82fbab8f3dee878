"""Train stage: launch the workers (horovodrun, torchrun or in-process) and check their end."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import replace
from typing import Any

import torch

from tasks.config import LifecycleConfig
from tasks.kube import mpi_hostfile
from tasks.runner import StageFailed, localize, run_command
from tasks.stage import StageContext, write_json
from tasks.threads import THREAD_VARS
from tasks.train.dist import Backend
from tasks.train.oom import after_oom, attempts, note_oom, oom_kills
from tasks.train.worker import oom_files, rank_file, run_worker

log = logging.getLogger(__name__)
WORKER = ["-m", "tasks.train.worker", "--config"]
# Set by Kubeflow Trainer's torch runtime on every node of a TrainJob; torchrun reads them.
NODES_ENV, NODE_RANK_ENV = "PET_NNODES", "PET_NODE_RANK"


def launcher_argv(cfg: LifecycleConfig, payload_path: str, hostfile: str | None = None,
                  multi_node: bool = False) -> list[str]:
    """The command that starts every worker of one node; with a hostfile (an MPIJob's
    launcher) horovodrun starts every node's, and with multi_node (a TrainJob's node) torchrun
    joins the other nodes through the runtime's PET_* variables (nnodes, node rank, master)."""
    n = cfg.world_size
    if cfg.launcher == "horovod":
        hosts = ["--hostfile", hostfile] if hostfile else ["-H", f"localhost:{n}", "--gloo"]
        return ["horovodrun", "-np", str(n), *hosts, "python", *WORKER, payload_path]
    if cfg.launcher in ("ddp", "fsdp"):
        where = [] if multi_node else ["--standalone"]
        return ["torchrun", *where, f"--nproc_per_node={cfg.workers}", *WORKER, payload_path]
    return ["python", *WORKER, payload_path]


def node_rank() -> int:
    """This node's rank in a multi-node TrainJob (0 everywhere else)."""
    return int(os.environ.get(NODE_RANK_ENV, "0"))


def thread_env(workers: int) -> dict[str, str]:
    """Split the free cores between workers: oversubscribed BLAS threads slow every rank
    down (the stage process sized its own pool to them at start)."""
    free = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    per_worker = str(max(1, free // workers))
    return dict.fromkeys(THREAD_VARS, per_worker)


def collect(ctx: StageContext) -> dict[str, Any]:
    """Rank 0's result, after checking every rank finished with identical weights."""
    n = ctx.config.world_size
    results = []
    for rank in range(n):
        path = rank_file(ctx.stage_dir, rank)
        if not path.exists():
            raise StageFailed(f"train: rank {rank} of {n} wrote no result")
        results.append(json.loads(path.read_text()))
    checksums = {r["checksum"] for r in results}
    if len(checksums) != 1:
        raise StageFailed(f"train: ranks ended with different weights: {checksums}")
    return results[0]


def _launch(ctx: StageContext, multi_node: bool) -> None:
    cfg = ctx.config
    if cfg.launcher == "single":
        run_worker(ctx, Backend())
        return
    payload = write_json(ctx.payload_path, ctx.to_payload())
    argv = launcher_argv(cfg, str(payload), hostfile=mpi_hostfile(), multi_node=multi_node)
    run_command(localize(argv), label=f"{cfg.launcher} workers",
                env=thread_env(cfg.workers) | ctx.settings.to_env())


def _launch_noting_oom(ctx: StageContext, multi_node: bool) -> None:
    """Launch the workers; an attempt that dies out of memory is noted for the retry."""
    kills = oom_kills()
    try:
        _launch(ctx, multi_node)
    except torch.OutOfMemoryError as exc:  # launcher=single: in this process
        note_oom(ctx.stage_dir, ctx.config, f"{type(exc).__name__}: {exc}")
        raise StageFailed(f"train: out of memory: {exc}") from exc
    except StageFailed:
        reported = [p.read_text() for p in oom_files(ctx.stage_dir)]
        now = oom_kills()
        if reported:
            note_oom(ctx.stage_dir, ctx.config, reported[0])
        elif kills is not None and now is not None and now > kills:
            note_oom(ctx.stage_dir, ctx.config,
                     f"the kernel's OOM killer killed {now - kills} process(es) (cgroup "
                     "oom_kill)")
        raise


def run(ctx: StageContext) -> dict[str, Any] | None:
    """Train; None on a TrainJob's other nodes, whose ranks node 0 collects."""
    ctx = replace(ctx, config=after_oom(ctx.stage_dir, ctx.config))
    multi_node = int(os.environ.get(NODES_ENV, "1")) > 1
    if node_rank() == 0:
        # Rank results of an earlier attempt must not pass for this attempt's. Other nodes
        # leave them alone: node 0's ranks may already be writing theirs.
        shutil.rmtree(ctx.stage_dir / "ranks", ignore_errors=True)
    _launch_noting_oom(ctx, multi_node)
    if node_rank() != 0:
        log.info("node %d: workers finished; node 0 collects the result", node_rank())
        return None
    result = collect(ctx) | {"grad_accumulation": ctx.config.grad_accumulation,
                             "oom_retries": len(attempts(ctx.stage_dir))}
    log.info("trained %d parameters on %d %s worker(s): val perplexity %.1f (untrained %.1f)",
             result["parameters"], result["workers"], result["launcher"],
             result["val_perplexity"], result["untrained_val_perplexity"])
    return result
