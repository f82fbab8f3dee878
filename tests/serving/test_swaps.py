"""No accepted request fails while the server is swapped under a bounded loopback load: a
promotion (alias move and reload), a challenger that cannot load, and SIGTERM (stop
accepting, finish what was accepted, exit)."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from dataclasses import dataclass, field

import pytest

from tests.serving.fixtures import Server, start_server


@dataclass
class Load:
    """Clients sending back to back over fresh connections (streamed and whole answers), so
    a refused connection (not accepted) is told apart from a failed request (accepted)."""

    server: Server
    clients: int = 4
    ok: list[tuple[float, float, str]] = field(default_factory=list)  # start, end, version
    failed: list[str] = field(default_factory=list)
    refused: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def _one(self, i: int) -> None:
        host, port = self.server.url.removeprefix("http://").split(":")
        stream = i % 2 == 0
        body = json.dumps({"messages": [{"role": "user", "content": f"hello {i}"}],
                           "max_tokens": 8, "stream": stream})
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            conn.connect()
        except ConnectionRefusedError:
            self.refused += 1
            time.sleep(0.05)
            return
        started = time.monotonic()
        try:
            conn.request("POST", "/v1/chat/completions", body, self.server.headers() | {
                "Content-Type": "application/json", "Connection": "close"})
            reply = conn.getresponse()
            text = reply.read().decode()
            if reply.status != 200 or (stream and not text.endswith("data: [DONE]\n\n")):
                self.failed.append(f"{reply.status}: {text[:200]}")
            else:
                self.ok.append((started, time.monotonic(), reply.getheader("X-Model-Version")))
        except (OSError, http.client.HTTPException) as exc:
            self.failed.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    def run(self, i: int) -> None:
        n = i
        while not self.stop.is_set():
            self._one(n)
            n += self.clients

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(self.clients)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def _admin(server: Server, method: str, path: str) -> dict:
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    conn.request(method, path, headers=server.headers(admin=True))
    reply = conn.getresponse()
    return json.loads(reply.read())


@pytest.fixture
def swapped(registry, tmp_path):
    """A server of its own (this test stops it); the aliases put back afterwards."""
    v = registry.versions
    servers = start_server(registry, tmp_path)
    yield next(servers)
    registry.point(v["champion"], v["healthy"])
    with pytest.raises(StopIteration):
        next(servers)


def test_promotion_a_failing_challenger_and_sigterm_fail_no_accepted_request(
        swapped, registry):
    server, v = swapped, registry.versions
    with Load(server) as load:
        time.sleep(1.5)
        registry.point(v["healthy"], v["champion"])  # promotion
        state = _admin(server, "POST", "/admin/reload")
        assert (state["champion"], state["challenger"]) == (v["healthy"], v["champion"])
        time.sleep(1.5)
        registry.point(v["healthy"], v["corrupt"])  # a challenger that cannot load
        state = _admin(server, "POST", "/admin/reload")
        assert state["champion"] == v["healthy"] and state["challenger"] is None
        assert "challenger version" in state["errors"][0]
        time.sleep(1.5)
        registry.point(v["slow"], v["corrupt"])  # requests in flight for a while at SIGTERM
        _admin(server, "POST", "/admin/reload")
        time.sleep(1.5)
        sigterm = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once it has drained, so a supervisor sees why it ended.
        assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)
        load.stop.set()
    assert load.failed == []
    versions = [version for _, _, version in load.ok]
    assert {v["champion"], v["healthy"], v["slow"]} <= set(versions)
    across = [1 for began, ended, _ in load.ok if began < sigterm < ended]
    assert across, "no request was in flight at SIGTERM"
    assert load.refused > 0  # new connections were refused after it
