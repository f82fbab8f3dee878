"""Surviving a spot instance's notice or a pod eviction: SIGTERM makes every worker write a
checkpoint at the step it is on and exit non-zero, so the retry resumes from that step (at
most the step in flight is lost). If the step does not end within the grace period, the
process exits without one (the last regular checkpoint stands)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType

log = logging.getLogger(__name__)
GRACE_ENV = "AIGC_PREEMPT_GRACE_S"
DEFAULT_GRACE_S = 30.0  # Kubernetes' default terminationGracePeriodSeconds
EXIT_PREEMPTED = 128 + signal.SIGTERM


class Preempted(RuntimeError):
    """Stopped by SIGTERM after checkpointing; the retry resumes from `step`."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped by SIGTERM at step {step}, checkpoint written: the retry "
                         "resumes there")
        self.step = step


def grace_seconds() -> float:
    return float(os.environ.get(GRACE_ENV, DEFAULT_GRACE_S))


class Preemption:
    """While installed, SIGTERM only asks the training loop to stop at its next step."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.requested_at: float | None = None
        self._timer: threading.Timer | None = None
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        if self.requested_at is not None:
            return
        self.requested_at = time.monotonic()
        log.warning("SIGTERM: checkpointing at the end of this step (grace %.0f s)",
                    self.grace_s)
        self._timer = threading.Timer(self.grace_s, self._out_of_time)
        self._timer.daemon = True
        self._timer.start()

    def _out_of_time(self) -> None:
        log.error("SIGTERM: the step did not end within %.0f s; exiting without a checkpoint",
                  self.grace_s)
        os._exit(EXIT_PREEMPTED)

    @property
    def requested(self) -> bool:
        return self.requested_at is not None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
