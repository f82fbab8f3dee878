"""Latency for the gate: paired rounds against the baseline, so load from elsewhere shows as
spread, never as a speed-up (an injected clock stands in for a noisy machine)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from tasks.compress.gate import Speed
from tasks.compress.measure import latency_ms, paired_latency


@dataclass
class Machine:
    """A clock whose load (a multiplier on every forward's cost) changes every few calls,
    as a neighbour's build comes and goes."""

    seed: int = 0
    steady: bool = False
    now: float = 0.0
    calls: int = 0
    load: float = 1.0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def run(self, cost: float) -> None:
        self.calls += 1
        if not self.steady and self.calls % 7 == 0:
            self.load = self.rng.choice([1.0, 1.0, 3.0, 6.0])
        self.now += cost * self.load

    def timer(self) -> float:
        return self.now


@dataclass
class Model:
    """Stands in for a model: each forward costs `cost` seconds of the machine's time."""

    machine: Machine
    cost: float
    n_positions: int = 64

    def logits(self, ids, mask):
        self.machine.run(self.cost)


def test_a_steady_machine_measures_the_real_speed_up():
    machine = Machine(steady=True)
    base, cand = Model(machine, 0.02), Model(machine, 0.01)
    latency, rounds = paired_latency(base, cand, 8, 64, timer=machine.timer)
    assert latency == pytest.approx(10.0) and rounds == pytest.approx([2.0] * 5)
    assert Speed.of(rounds).faster


def test_load_from_elsewhere_is_spread_not_a_speed_up():
    """A candidate 5% faster on a machine whose load jumps: timed apart (as the gate once
    did), the load makes a large speed-up of it; timed in paired rounds, the spread covers
    the effect and no speed-up is called."""
    machine = Machine(seed=3)
    base, cand = Model(machine, 0.020), Model(machine, 0.019)
    for _ in range(20):  # time the baseline until a burst of load slows it
        apart = latency_ms(base, 8, 64, timer=machine.timer) / latency_ms(
            cand, 8, 64, timer=machine.timer)
        if apart > 2:
            break
    assert apart > 2  # what separate measurements believed
    _, rounds = paired_latency(base, cand, 8, 64, timer=machine.timer)
    speed = Speed.of(rounds)
    assert not speed.conclusive and not speed.faster, rounds
