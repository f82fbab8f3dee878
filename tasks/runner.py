"""Run a stage (or a launcher) as a child process with the argv a Kubernetes pod would get."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.errors import EXIT_BAD_INPUT, BadInput
from tasks.stage import StageContext

log = logging.getLogger(__name__)
TAIL_LINES = 40


class StageFailed(RuntimeError):
    """A stage process exited non-zero; the message carries its exit code and last lines."""


class StageRejectedInput(StageFailed, BadInput):
    """The stage exited with EXIT_BAD_INPUT: a retry would fail the same way."""


def stage_argv(stage: str, payload_path: str) -> list[str]:
    """The container command of a stage; the local runner executes exactly this."""
    return ["python", "-m", "tasks", stage, "--config", payload_path]


def localize(argv: list[str]) -> list[str]:
    """Map the container's tool names onto this interpreter's environment (the venv)."""
    bindir = Path(sys.executable).parent
    out = []
    for arg in argv:
        if arg == "python":
            out.append(sys.executable)
        elif arg in ("horovodrun", "torchrun") and (bindir / arg).exists():
            out.append(str(bindir / arg))
        else:
            out.append(arg)
    return out


@contextlib.contextmanager
def _passing_sigterm(proc: subprocess.Popen) -> Iterator[None]:
    """SIGTERM to this process (a pod's eviction, a spot notice) goes on to the child, which
    ends gracefully (training checkpoints); this process then fails with the child's code."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(argv: list[str], *, label: str, env: dict[str, str] | None = None) -> None:
    """Run argv, streaming its output into our log; raise StageFailed with its tail on error."""
    log.info("running %s", " ".join(argv))
    full_env = os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {})
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=full_env, bufsize=1) as proc, _passing_sigterm(proc):
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            log.info("[%s] %s", label, line)
    if proc.returncode != 0:
        error = StageRejectedInput if proc.returncode == EXIT_BAD_INPUT else StageFailed
        raise error(f"{label} exited with code {proc.returncode}; last lines:\n"
                    + "\n".join(tail))


def run_process(ctx: StageContext, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Write the payload, run the stage process, return the result it wrote. `env` adds
    secrets (kept out of the payload file, which lands in the artifact store)."""
    payload_path = ctx.hand_off()
    run_command(localize(stage_argv(ctx.stage, str(payload_path))), label=f"stage {ctx.stage}",
                env=ctx.settings.to_env() | (env or {}))
    return ctx.read_result()
