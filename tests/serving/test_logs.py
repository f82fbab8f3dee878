"""JSON access and event lines for log shippers, never holding a key or (unless enabled, and
then masked) a prompt; an OpenTelemetry span per request when an OTLP endpoint is set."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from serving.limits import key_id
from tests.serving.fixtures import Server, start_server


def _lines(server: Server) -> list[dict]:
    time.sleep(0.3)  # the access line is written once the response is sent
    return [json.loads(line) for line in server.log.read_text().splitlines()
            if line.startswith("{")]


def _chat(server: Server, content: str, key: str | None = None) -> requests.Response:
    return requests.post(f"{server.url}/v1/chat/completions", timeout=60,
                         headers={"Authorization": f"Bearer {key or server.api_key}"},
                         json={"messages": [{"role": "user", "content": content}],
                               "max_tokens": 4, "temperature": 0, "user": "alice"})


def test_one_json_access_line_per_request_without_keys_or_prompts(server):
    secret_prompt = "tell me about the quarterly numbers"
    answer = _chat(server, secret_prompt)
    refused = _chat(server, "hi", key="not-a-key")
    assert answer.status_code == 200 and refused.status_code == 401
    rid = answer.json()["id"]
    lines = _lines(server)
    [line] = [entry for entry in lines if entry.get("request_id") == rid]
    assert line["logger"] == "aigc.access" and line["status"] == 200
    assert line["model_version"] == answer.headers["X-Model-Version"]
    assert line["key_id"] == key_id(server.api_key) and line["route"] == "champion"
    assert line["tokens"] >= 1 and line["finish"] in ("stop", "length")
    assert line["cache"] in ("miss", "local") and line["latency_ms"] > 0
    assert any(e.get("status") == 401 and e.get("path") == "/v1/chat/completions"
               for e in lines)
    text = server.log.read_text()
    assert server.api_key not in text and server.admin_key not in text
    assert secret_prompt not in text and "not-a-key" not in text
    assert not any(e.get("path") == "/healthz" for e in lines)  # probes stay quiet
    assert any(e["logger"] == "serving.pool" and "loaded" in e["message"] for e in lines)


@pytest.fixture(scope="module")
def collector():
    """An OTLP/HTTP endpoint on loopback that keeps what it is sent."""
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server interface
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", bodies
    httpd.shutdown()


@pytest.fixture(scope="module")
def traced(registry, collector, tmp_path_factory):
    url, _ = collector
    yield from start_server(registry, tmp_path_factory.mktemp("traced"),
                            AIGC_LOG_PROMPTS="1", OTEL_EXPORTER_OTLP_ENDPOINT=url,
                            OTEL_BSP_SCHEDULE_DELAY="200")


def test_masked_prompts_when_enabled_and_a_span_per_request(traced, collector):
    answer = _chat(traced, "mail me at bob@example.com please")
    rid = answer.json()["id"]
    [line] = [e for e in _lines(traced) if e.get("request_id") == rid]
    assert "bob@example.com" not in line["prompt"] and "please" in line["prompt"]
    assert isinstance(line["response"], str)
    raw = traced.log.read_text().splitlines()
    assert raw and all(text.startswith("{") for text in raw)  # warnings, library logs too
    _, bodies = collector
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(rid.encode() in b for b in bodies):
        time.sleep(0.1)
    assert any(rid.encode() in b and b"/v1/chat/completions" in b for b in bodies)
