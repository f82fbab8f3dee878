"""Scripted canary metrics: versions "1" (champion) and "2" (challenger) serve traffic in
proportion to the weight the target holds, each snapshot one interval later."""

from __future__ import annotations

from collections.abc import Callable

from tasks.rollout.observe import Snapshot


class Traffic:
    """Cumulative counters that grow with the weight set on the target, per snapshot."""

    def __init__(self, weight: Callable[[], int], challenger_error_rate: float = 0.0,
                 fail_after: int | None = None) -> None:
        self.weight, self.rate, self.fail_after = weight, challenger_error_rate, fail_after
        self.totals = {"1": [0.0, 0.0], "2": [0.0, 0.0]}
        self.calls = 0

    def snapshot(self) -> dict[str, Snapshot]:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise ConnectionError("metrics endpoint gone")
        weight = self.weight()
        for version, share, rate in (("1", 100 - weight, 0.0), ("2", weight, self.rate)):
            self.totals[version][0] += share * 2
            self.totals[version][1] += share * 2 * rate
        return {v: Snapshot(r, e, buckets=((0.1, r), (float("inf"), r)))
                for v, (r, e) in self.totals.items()}
