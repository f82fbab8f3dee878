"""Redis is an optional tier: a server on a Redis of its own keeps serving while that Redis
hangs (stopped), refuses connections (killed) and comes back empty (restarted); the job
worker reconnects and jobs accepted afterwards finish."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from serving.local import free_port
from tests.serving.fixtures import Server, start_server


def _redis(port: int, folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        time.sleep(0.05)
    raise TimeoutError(f"redis-server did not start on port {port}")


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory):
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must provide it")
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("redis")
    port = free_port()
    state = {"proc": _redis(port, folder), "port": port, "folder": folder}
    yield state
    state["proc"].kill()
    state["proc"].wait()


@pytest.fixture(scope="module")
def on_redis(registry, own_redis, tmp_path_factory):
    yield from start_server(registry, tmp_path_factory.mktemp("on-redis"),
                            AIGC_REDIS_URL=f"redis://127.0.0.1:{own_redis['port']}/0")


def _job(server: Server) -> requests.Response:
    return requests.post(f"{server.url}/v1/jobs", headers=server.headers(), timeout=30,
                         json={"prompt": "hello there", "max_new_tokens": 4})


def _done(server: Server, job_id: str, within_s: float) -> dict:
    deadline = time.monotonic() + within_s
    job: dict = {}
    while time.monotonic() < deadline:
        reply = requests.get(f"{server.url}/v1/jobs/{job_id}", headers=server.headers(),
                             timeout=30)
        if reply.ok:
            job = reply.json()
            if job["status"] in ("done", "failed"):
                return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not done after {within_s}s: {job}")


def _generate(server: Server, prompt: str) -> requests.Response:
    return requests.post(f"{server.url}/v1/generate", headers=server.headers(), timeout=60,
                         json={"prompt": prompt, "max_new_tokens": 2, "temperature": 0})


def _circuit(server: Server) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("aigc_redis_circuit_open "))


def test_a_hung_then_dead_then_restarted_redis_never_stops_serving(on_redis, own_redis):
    server = on_redis
    assert _done(server, _job(server).json()["job_id"], 30)["status"] == "done"
    proc = own_redis["proc"]
    proc.send_signal(signal.SIGSTOP)  # hung: connections are accepted, nothing answers
    try:
        began = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            health = pool.submit(lambda: [requests.get(f"{server.url}/healthz", timeout=10)
                                          .elapsed.total_seconds() for _ in range(20)])
            replies = [_generate(server, f"greedy prompt {i}") for i in range(30)]
        took = time.perf_counter() - began
        assert [r.status_code for r in replies] == [200] * 30
        # Before: every request waited on Redis twice (about 1 s each, 30 s in all) and
        # health checks stalled behind them. Now the breaker skips Redis after 3 timeouts.
        assert took < 10, took
        assert max(health.result()) < 1.0, health.result()
        assert _circuit(server) == 1
    finally:
        proc.send_signal(signal.SIGCONT)
    proc.kill()  # dead: connections refused
    proc.wait()
    metrics = requests.get(f"{server.url}/metrics", timeout=10)
    assert metrics.status_code == 200 and "aigc_requests_total" in metrics.text
    refused = _job(server)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert "job queue" in refused.json()["detail"]
    assert _generate(server, "served without redis").status_code == 200
    own_redis["proc"] = _redis(own_redis["port"], own_redis["folder"])  # back, and empty
    deadline = time.monotonic() + 20
    while (reply := _job(server)).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.5)  # until the breaker lets a trial through
    assert reply.status_code == 202, reply.text
    assert _done(server, reply.json()["job_id"], 30)["status"] == "done"
    assert _circuit(server) == 0
