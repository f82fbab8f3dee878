"""The model pool and engines on their own (no server): the weight is never stuck behind a
load, a version that fails to load waits longer each time, retired versions stop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from serving.engine import ContinuousEngine, GenItem, RequestEngine, Retired
from serving.pool import LoadedModel, ModelPool
from serving.settings import ServerSettings
from tasks.lm.generate import Sampling


class FakeEngine:
    active = 0

    def __init__(self) -> None:
        self.retired = False

    def retire(self) -> None:
        self.retired = True


def _settings(**extra) -> ServerSettings:
    return ServerSettings(model_name="m", tracking_uri="sqlite://", api_keys=frozenset({"k"}),
                          admin_key="a", feedback_db="unused", **extra)


def _pool(wanted: dict, load_s: float = 0.0, fail: frozenset = frozenset()):
    pool = ModelPool(_settings(reload_interval_s=10))
    loads: list[str] = []

    def load(version: str) -> LoadedModel:
        loads.append(version)
        time.sleep(load_s if version not in ("1", "2") else 0)
        if version in fail:
            raise RuntimeError("weights unreadable")
        return LoadedModel(version, None, None, FakeEngine())

    pool._resolve = lambda: dict(wanted)
    pool._load = load
    return pool, loads


def test_the_weight_is_set_at_once_while_a_model_loads_and_kept_by_the_swap():
    wanted = {"champion": "1", "challenger": "2"}
    pool, _ = _pool(wanted, load_s=2.0)
    pool.refresh()
    pool.set_weight("2", 30)
    wanted["champion"] = "3"  # a promotion that takes 2 s to load
    loading = threading.Thread(target=pool.refresh)
    loading.start()
    time.sleep(0.2)
    began = time.monotonic()
    pool.set_weight("2", 60)  # before: waited for the whole load on the pool's lock
    assert time.monotonic() - began < 0.5
    loading.join()
    state = pool.state
    assert (state.champion.version, state.challenger.version, state.weight) == ("3", "2", 60)


def test_a_version_that_fails_to_load_is_tried_again_after_a_growing_pause():
    pool, loads = _pool({"champion": "1", "challenger": "9"}, fail=frozenset({"9"}))
    assert "weights unreadable" in pool.refresh().errors[0]
    errors = pool.refresh().errors
    assert loads.count("9") == 1 and "next try in 10s" in errors[0]
    pool.refresh(force=True)  # an admin reload tries at once
    assert loads.count("9") == 2 and "next try in 20s" in pool.refresh().errors[0]


def test_a_version_no_longer_served_is_retired():
    wanted = {"champion": "1", "challenger": "2"}
    pool, _ = _pool(wanted)
    first = pool.refresh()
    wanted |= {"champion": "2", "challenger": None}
    second = pool.refresh()
    assert first.champion.engine.retired and not second.champion.engine.retired


def test_admin_key_from_a_secret_file_loses_its_newline():
    env = {"AIGC_API_KEYS": "k1", "AIGC_ADMIN_KEY": "admin-key\n"}
    assert ServerSettings.from_env(env).admin_key == "admin-key"


@pytest.mark.parametrize("kind", ["continuous", "request"])
def test_a_retired_engine_finishes_what_it_accepted_then_stops(tiny_lm, kind):
    async def main():
        if kind == "continuous":
            engine = ContinuousEngine(tiny_lm.model, max_rows=4, name="t")
        else:
            engine = RequestEngine(tiny_lm.model, max_rows=4, max_wait_s=0.01, name="t")
        streams = [engine.submit(GenItem(f"hi {i}", Sampling(20, 0.0), i)) for i in range(3)]
        engine.retire()
        ends = []
        for stream in streams:
            async for chunk in stream:
                last = chunk
            ends.append(last.finish)
        deadline = time.monotonic() + 5
        while engine.running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        with pytest.raises(Retired):  # the caller routes it to the version now served
            engine.submit(GenItem("late", Sampling(2, 0.0), 0))
        return ends, engine.running

    ends, running = asyncio.run(main())
    assert set(ends) <= {"stop", "length"} and len(ends) == 3
    assert not running
