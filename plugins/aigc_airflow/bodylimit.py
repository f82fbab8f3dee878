"""A size limit on request bodies of Airflow's public REST API, before anything reads them.

Without it a megabyte of DAG run conf is parsed, validated and, when refused, quoted back
twice in the 400 answer (Airflow's Param validation echoes the value); when accepted, it
travels into every log line that names it. The task-execution API (/execution/, which carries
XComs) is left alone."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

PREFIX = "/api/v2/"
DEFAULT_MAX_BYTES = 64 * 1024  # a DAG run conf of this project is a few kilobytes


def max_body_bytes() -> int:
    return int(os.environ.get("AIGC_API_MAX_BODY_BYTES", DEFAULT_MAX_BYTES))


class BodyLimit:
    """Pure ASGI middleware: a body over `max_bytes` on the REST API gets 413 naming the
    limit; a body within it is handed on unchanged (read once, replayed)."""

    def __init__(self, app: App, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        body, more = b"", True
        while more:  # a chunked body declares no length: count what arrives
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay(b"", message, receive), send)
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._refuse(send)
                return
        await self.app(scope, _replay(body, None, receive), send)

    async def _refuse(self, send: Send) -> None:
        detail = json.dumps({"detail": f"request body over {self.max_bytes:,} bytes "
                                       "(AIGC_API_MAX_BODY_BYTES)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(detail)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": detail})


def _replay(body: bytes, pending: Message | None, receive: Receive) -> Receive:
    """A receive that hands the app the body read already (or the message that ended the
    reading), then whatever the client sends next (a disconnect)."""
    first: list[Message] = [pending or {"type": "http.request", "body": body,
                                        "more_body": False}]

    async def replay() -> Message:
        return first.pop() if first else await receive()
    return replay
