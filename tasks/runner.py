"""Run a stage as a child process with the same argv a Kubernetes pod would get."""

from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
import sys
from typing import Any

from tasks.errors import EXIT_BAD_INPUT, BadInput
from tasks.stage import RESULT_FILE, StageContext, write_json

log = logging.getLogger(__name__)
TAIL_LINES = 40


class StageFailed(RuntimeError):
    """The stage process exited non-zero; the message carries its exit code and last lines."""


class StageRejectedInput(StageFailed, BadInput):
    """The stage exited with EXIT_BAD_INPUT: a retry would fail the same way."""


def stage_argv(stage: str, payload_path: str) -> list[str]:
    """The container command of a stage; the local runner executes exactly this."""
    return ["python", "-m", "tasks", stage, "--config", payload_path]


def run_process(ctx: StageContext) -> dict[str, Any]:
    """Write the payload, run the stage process, stream its output, return its result."""
    payload_path = write_json(ctx.stage_dir / "payload.json", ctx.to_payload())
    result_path = ctx.stage_dir / RESULT_FILE
    # A result left by an earlier attempt must never be mistaken for this attempt's.
    result_path.unlink(missing_ok=True)
    argv = stage_argv(ctx.stage, str(payload_path))
    argv[0] = sys.executable  # the same interpreter (venv) as the worker
    log.info("running %s", " ".join(argv))
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            log.info("[%s] %s", ctx.stage, line)
    if proc.returncode != 0:
        error = StageRejectedInput if proc.returncode == EXIT_BAD_INPUT else StageFailed
        raise error(f"stage {ctx.stage!r} exited with code {proc.returncode}; "
                          "last lines:\n" + "\n".join(tail))
    return json.loads(result_path.read_text())
