"""What every request passes before FastAPI parses it: the key, the body size, strict JSON.

FastAPI reads and parses a body before it resolves the dependencies that check the key, so
an unauthenticated client could make the server read and parse any amount of JSON. The
`GuardedRoute` class checks for a known key first, then reads the body up to a limit, then
parses it strictly (no NaN or Infinity, no number beyond a float, no unpaired surrogate),
and hands the parsed body to FastAPI, which does not parse it again.
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute


class BodyError(HTTPException):
    """A body refused before validation (size or JSON), with the limit or the reason."""


def bearer(authorization: str | None, api_key: str | None) -> str | None:
    """The key a request carries (`Authorization: Bearer` or `X-API-Key`), or None."""
    if api_key and api_key.strip():
        return api_key.strip()
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def matches(key: str, allowed: frozenset[str] | tuple[str, ...]) -> bool:
    # Compare with every key in constant time: no timing hint about which prefix matched.
    return any([hmac.compare_digest(key.encode(), k.encode()) for k in allowed])


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:20]} is too large for a number")
    return value


def _check_strings(value: Any) -> None:
    """Every string must be valid Unicode text (JSON escapes can encode lone surrogates)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a string holds an unpaired surrogate (\\ud800-\\udfff)") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_strings(k)
            _check_strings(v)
    elif isinstance(value, list):
        for v in value:
            _check_strings(v)


def parse_json(body: bytes) -> Any:
    """A request body as JSON, refusing what JSON or UTF-8 do not allow."""
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_no_constant,
                           parse_float=_finite)
        _check_strings(value)
    except UnicodeDecodeError as exc:
        raise BodyError(400, f"the body is not valid UTF-8 (byte {exc.start})") from None
    except ValueError as exc:  # json.JSONDecodeError included
        raise BodyError(400, f"the body is not valid JSON: {exc}") from None
    return value


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (declared or sent)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyError(413, f"the body is {int(declared)} bytes; the limit is {limit} "
                        "bytes (AIGC_MAX_BODY_BYTES)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyError(413, f"the body passes the limit of {limit} bytes "
                            "(AIGC_MAX_BODY_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


def guarded_route(keys: Callable[[], tuple[frozenset[str], str]], max_body_bytes: int,
                  ) -> type[APIRoute]:
    """A route class: key known (client or admin) → body within the limit → strict JSON.

    The route's own dependency still decides which key it needs (a client key cannot use
    an admin endpoint); this check only makes sure no unknown caller gets the body read."""

    class GuardedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()
            has_body = bool(self.body_field)

            async def guarded(request: Request) -> Response:
                clients, admin = keys()
                key = bearer(request.headers.get("authorization"),
                             request.headers.get("x-api-key"))
                if key is None:
                    raise HTTPException(401, "missing API key: send 'Authorization: Bearer "
                                        "<key>' or 'X-API-Key: <key>'",
                                        headers={"WWW-Authenticate": "Bearer"})
                if not matches(key, clients | {admin}):
                    raise HTTPException(401, "invalid API key",
                                        headers={"WWW-Authenticate": "Bearer"})
                if has_body:
                    body = await read_limited(request, max_body_bytes)
                    request._body = body  # FastAPI reads these instead of the socket
                    request._json = parse_json(body) if body else None
                return await handler(request)

            return guarded

    return GuardedRoute
