"""Train stage: launch the workers (horovodrun, torchrun or in-process) and check their end."""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

from tasks.config import LifecycleConfig
from tasks.runner import StageFailed, localize, run_command
from tasks.stage import StageContext, write_json
from tasks.threads import THREAD_VARS
from tasks.train.dist import Backend
from tasks.train.worker import rank_file, run_worker

log = logging.getLogger(__name__)
WORKER = ["-m", "tasks.train.worker", "--config"]


def launcher_argv(cfg: LifecycleConfig, payload_path: str, hostfile: str | None = None
                  ) -> list[str]:
    """The command that starts every worker of one node, or with a hostfile (an MPIJob's
    launcher) of every node, where horovodrun picks MPI when the image has it."""
    n = cfg.world_size
    if cfg.launcher == "horovod":
        hosts = ["--hostfile", hostfile] if hostfile else ["-H", f"localhost:{n}", "--gloo"]
        return ["horovodrun", "-np", str(n), *hosts, "python", *WORKER, payload_path]
    if cfg.launcher in ("ddp", "fsdp"):
        return ["torchrun", "--standalone", f"--nproc_per_node={n}", *WORKER, payload_path]
    return ["python", *WORKER, payload_path]


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


def run(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.config
    # Rank results of an earlier attempt must not pass for this attempt's.
    shutil.rmtree(ctx.stage_dir / "ranks", ignore_errors=True)
    if cfg.launcher == "single":
        run_worker(ctx, Backend())
    else:
        payload = write_json(ctx.payload_path, ctx.to_payload())
        run_command(localize(launcher_argv(cfg, str(payload))), label=f"{cfg.launcher} workers",
                    env=thread_env(cfg.world_size) | ctx.settings.to_env())
    result = collect(ctx)
    log.info("trained %d parameters on %d %s worker(s): val perplexity %.1f (untrained %.1f)",
             result["parameters"], result["workers"], result["launcher"],
             result["val_perplexity"], result["untrained_val_perplexity"])
    return result
