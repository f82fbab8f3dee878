"""The REST API's body limit, on a small ASGI app standing in for Airflow's."""

from __future__ import annotations

import pytest
from aigc_airflow.bodylimit import BodyLimit
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient


async def echo_size(request: Request) -> JSONResponse:
    return JSONResponse({"size": len(await request.body())})


@pytest.fixture
def client() -> TestClient:
    app = Starlette(routes=[Route("/api/v2/dags/x/dagRuns", echo_size, methods=["POST"]),
                            Route("/execution/xcoms", echo_size, methods=["POST"])])
    return TestClient(BodyLimit(app, max_bytes=1000))


def test_a_body_within_the_limit_reaches_the_api_whole(client):
    reply = client.post("/api/v2/dags/x/dagRuns", content=b"x" * 1000)
    assert reply.status_code == 200 and reply.json() == {"size": 1000}


def test_a_body_over_the_limit_is_refused_unread_naming_the_limit(client):
    reply = client.post("/api/v2/dags/x/dagRuns", content=b"x" * 1001)
    assert reply.status_code == 413
    assert reply.json() == {"detail": "request body over 1,000 bytes (AIGC_API_MAX_BODY_BYTES)"}


def test_a_chunked_body_is_counted_as_it_arrives(client):
    chunks = (b"x" * 400 for _ in range(3))  # no length declared
    assert client.post("/api/v2/dags/x/dagRuns", content=chunks).status_code == 413
    small = (b"x" * 400 for _ in range(2))
    assert client.post("/api/v2/dags/x/dagRuns", content=small).json() == {"size": 800}


def test_the_task_execution_api_is_not_limited(client):
    assert client.post("/execution/xcoms", content=b"x" * 5000).json() == {"size": 5000}
