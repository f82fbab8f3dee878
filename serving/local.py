"""Start the server as a child process on loopback and wait until it is ready."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class LocalServer:
    url: str
    proc: subprocess.Popen | None  # None: a server someone else runs


def wait_ready(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> dict:
    """Poll /readyz until a champion is loaded; fail early if the process died."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"model server exited with {proc.returncode} before it was ready")
        with contextlib.suppress(requests.RequestException):
            reply = requests.get(f"{url}/readyz", timeout=2)
            if reply.ok:
                return reply.json()
            last = reply.text
        time.sleep(0.2)
    raise TimeoutError(f"model server at {url} not ready after {timeout_s:.0f}s: {last}")


def is_alive(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=2).ok
    except requests.RequestException:
        return False


@contextlib.contextmanager
def local_server(env: dict[str, str], log_path: Path, *, port: int | None = None,
                 timeout_s: float = 120) -> Iterator[LocalServer]:
    """`python -m serving` on 127.0.0.1 with env on top of ours; stopped on exit."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving"], stdout=log, stderr=subprocess.STDOUT,
            env=os.environ | env | {"AIGC_SERVER_HOST": "127.0.0.1",
                                   "AIGC_SERVER_PORT": str(port)})
    try:
        wait_ready(url, timeout_s, proc)
        yield LocalServer(url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
