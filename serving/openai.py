"""The OpenAI-compatible API: completions, chat completions (streamed as server-sent events)
and the model list, over the same routing, cache, engines and request log as /v1/generate.

Model ids: `<name>` is routed by the canary weight (a `user` keeps one version); `<name>@champion`,
`<name>@challenger` and `<name>@<version>` pin what answers. Answers name the version that
answered as `<name>@<version>` and in the X-Model-Version header; their id is the request id
that feedback names.
"""


import json
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.engine import GenItem
from serving.service import MAX_SEED, Generation, Service
from serving.settings import ServerSettings
from tasks.lm.generate import FINISH_ERROR, Sampling

OWNER = "aigc-lifecycle"
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 409: "conflict_error",
               413: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error", 503: "service_unavailable"}


def error_body(status: int, message: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"),
                      "param": param, "code": code}}


class Strict(BaseModel):
    # A misspelt field is an error, not a silent default; numbers are numbers, not "8" or true.
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(Strict):
    include_usage: bool = False


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(None, max_length=64)

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


def _neutral(name: str, value: Any, neutral: tuple[Any, ...]) -> None:
    if value not in neutral:
        raise ValueError(f"{name}: only {neutral[0]!r} is supported")


def request_models(settings: ServerSettings) -> tuple[type[Strict], type[Strict]]:
    """The completion and chat bodies, bounded by this server's limits."""

    class Common(Strict):
        model: str | None = Field(None, max_length=128)
        temperature: float = Field(1.0, ge=0, le=2, allow_inf_nan=False)
        top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
        seed: int | None = Field(None, ge=0, le=MAX_SEED)
        stop: str | list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
            None, max_length=4)
        n: int = Field(1, ge=1, le=1, description="one choice per request")
        stream: bool = False
        stream_options: StreamOptions | None = None
        user: str | None = Field(None, min_length=1, max_length=128)
        # Accepted at their neutral values, so clients that always send them work.
        frequency_penalty: float = Field(0.0, allow_inf_nan=False)
        presence_penalty: float = Field(0.0, allow_inf_nan=False)
        logprobs: bool | int | None = None
        logit_bias: dict[str, float] | None = None

        @model_validator(mode="after")
        def supported(self) -> "Common":
            _neutral("frequency_penalty", self.frequency_penalty, (0.0,))
            _neutral("presence_penalty", self.presence_penalty, (0.0,))
            _neutral("logprobs", self.logprobs, (None, False))
            _neutral("logit_bias", self.logit_bias or None, (None,))
            return self

        def stops(self) -> tuple[str, ...]:
            return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    most = settings.max_new_tokens

    class CompletionRequest(Common):
        prompt: str | list[str] = Field(min_length=1)
        max_tokens: int = Field(16, ge=1, le=most)
        echo: bool = False
        suffix: str | None = None

        @field_validator("prompt")
        @classmethod
        def one_prompt(cls, value: str | list[str]) -> str | list[str]:
            if isinstance(value, list) and len(value) != 1:
                raise ValueError("one prompt per request")
            text = value if isinstance(value, str) else value[0]
            if len(text) > settings.max_prompt_chars:
                raise ValueError(f"the prompt is {len(text)} characters; the limit is "
                                 f"{settings.max_prompt_chars} (AIGC_MAX_PROMPT_CHARS)")
            if not text.strip():
                raise ValueError("prompt is blank")
            return value

        @model_validator(mode="after")
        def plain(self) -> "CompletionRequest":
            _neutral("echo", self.echo, (False,))
            _neutral("suffix", self.suffix, (None,))
            return self

        def text(self) -> str:
            return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    class ChatRequest(Common):
        messages: list[Message] = Field(min_length=1, max_length=256)
        max_tokens: int | None = Field(None, ge=1, le=most)
        max_completion_tokens: int | None = Field(None, ge=1, le=most)

        @field_validator("messages")
        @classmethod
        def within_limit(cls, value: list[Message]) -> list[Message]:
            size = sum(len(m.text()) for m in value)
            if size > settings.max_prompt_chars:
                raise ValueError(f"the messages hold {size} characters; the limit is "
                                 f"{settings.max_prompt_chars} (AIGC_MAX_PROMPT_CHARS)")
            if value[-1].role != "user":
                raise ValueError("the last message must be the user's")
            if not value[-1].text().strip():
                raise ValueError("the last message is blank")
            return value

        def token_limit(self) -> int:
            return self.max_completion_tokens or self.max_tokens or most

        def conversation(self) -> tuple[dict[str, str], ...]:
            return tuple({"role": m.role, "content": m.text()} for m in self.messages)

    return CompletionRequest, ChatRequest


def _pinned(settings: ServerSettings, model: str | None) -> str | None:
    """The alias or version a model id pins (None: routed by the canary weight)."""
    if model is None or model == settings.model_name:
        return None
    name, sep, target = model.partition("@")
    if sep and name == settings.model_name and target:
        return target
    raise HTTPException(404, f"model: {model} is not served here (GET /v1/models lists "
                        "what is)")


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _usage(gen: Generation) -> dict[str, int]:
    return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.tokens,
            "total_tokens": gen.prompt_tokens + gen.tokens}


def _finish_reason(gen: Generation) -> str:
    return "length" if gen.finish == "length" else "stop"


def router(service: Service, settings: ServerSettings, generating: Callable[..., Any],
           reading: Callable[..., Any], route_class: type) -> APIRouter:
    """The routes; `generating` and `reading` are the key checks (with the limits) of
    generation and of the model list."""
    api = APIRouter(route_class=route_class, tags=["OpenAI-compatible"])
    CompletionRequest, ChatRequest = request_models(settings)  # noqa: N806 - classes
    name = settings.model_name

    def model_id(gen: Generation) -> str:
        return f"{name}@{gen.version}"

    async def answer(gen: Generation, stream: bool, usage_chunk: bool,
                     shape: Callable[[Generation, str, str | None, bool], dict[str, Any]],
                     ) -> JSONResponse | StreamingResponse:
        if not stream:
            await service.complete(gen)
            if gen.finish == FINISH_ERROR:
                raise HTTPException(500, f"model version {gen.version} failed: {gen.error}",
                                    headers=gen.headers())
            return JSONResponse(shape(gen, gen.text, _finish_reason(gen), True) | {
                "usage": _usage(gen)}, headers=gen.headers())

        async def events() -> AsyncIterator[str]:
            first = True
            async for chunk in service.chunks(gen):
                if chunk.finish == FINISH_ERROR:
                    yield _sse(error_body(500, f"model version {gen.version} failed: "
                                               f"{chunk.error}"))
                    break
                end = chunk.finish is not None
                if chunk.piece or end or first:
                    body = shape(gen, chunk.piece, _finish_reason(gen) if end else None, first)
                    yield _sse(body | ({"usage": _usage(gen)} if end else {}))
                    first = False
            if usage_chunk and gen.finish != FINISH_ERROR:
                yield _sse(shape(gen, "", None, False) | {"choices": [], "usage": _usage(gen)})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers=gen.headers() | {"Cache-Control": "no-cache"})

    async def start(body: Any, prompt: str | tuple[dict[str, str], ...], record_prompt: str,
                    max_tokens: int, raw: bool, sticky: str | None, kid: str) -> Generation:
        seed = body.seed if body.seed is not None else random.randint(0, MAX_SEED)
        sampling = Sampling(max_tokens, body.temperature, body.top_p, body.stops())
        params = {"max_new_tokens": max_tokens, "temperature": body.temperature,
                  "top_p": body.top_p, "seed": body.seed,
                  **({"stop": list(body.stops())} if body.stop else {}),
                  **({"raw": True} if raw else {})}
        return await service.begin(GenItem(prompt, sampling, seed, raw), params, record_prompt,
                                   sticky, kid, _pinned(settings, body.model))

    @api.post("/v1/completions", summary="Complete a prompt (OpenAI-compatible)")
    async def completions(body: CompletionRequest, kid: Annotated[str, Depends(generating)],
                          x_session_id: Annotated[str | None, Header(max_length=128)] = None,
                          ) -> Any:
        text = body.text()
        gen = await start(body, text, text, body.max_tokens, True, body.user or x_session_id,
                          kid)

        def shape(g: Generation, piece: str, finish: str | None, _first: bool,
                  ) -> dict[str, Any]:
            return {"id": g.request_id, "object": "text_completion",
                    "created": int(time.time()), "model": model_id(g),
                    "choices": [{"index": 0, "text": piece, "logprobs": None,
                                 "finish_reason": finish}]}

        return await answer(gen, body.stream, _usage_asked(body), shape)

    @api.post("/v1/chat/completions", summary="Answer a conversation (OpenAI-compatible)")
    async def chat(body: ChatRequest, kid: Annotated[str, Depends(generating)],
                   x_session_id: Annotated[str | None, Header(max_length=128)] = None,
                   ) -> Any:
        conversation = body.conversation()
        gen = await start(body, conversation, conversation[-1]["content"],
                          body.token_limit(), False, body.user or x_session_id, kid)

        def shape(g: Generation, piece: str, finish: str | None, first: bool,
                  ) -> dict[str, Any]:
            whole = {"role": "assistant", "content": piece}
            if not body.stream:
                return {"id": g.request_id, "object": "chat.completion",
                        "created": int(time.time()), "model": model_id(g),
                        "choices": [{"index": 0, "message": whole, "logprobs": None,
                                     "finish_reason": finish}]}
            delta = whole if first else ({"content": piece} if piece else {})
            return {"id": g.request_id, "object": "chat.completion.chunk",
                    "created": int(time.time()), "model": model_id(g),
                    "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                 "finish_reason": finish}]}

        return await answer(gen, body.stream, _usage_asked(body), shape)

    @api.get("/v1/models", summary="The served model ids (OpenAI-compatible)")
    async def models(_: Annotated[str, Depends(reading)]) -> dict[str, Any]:
        state = service.pool.state
        data = [{"id": name, "object": "model", "created": 0, "owned_by": OWNER,
                 "description": "routed by the canary weight"}]
        for alias, model in (("champion", state.champion), ("challenger", state.challenger)):
            if model is not None:
                data += [{"id": f"{name}@{alias}", "object": "model", "created": 0,
                          "owned_by": OWNER, "version": model.version},
                         {"id": f"{name}@{model.version}", "object": "model", "created": 0,
                          "owned_by": OWNER, "version": model.version, "alias": alias}]
        return {"object": "list", "data": data}

    return api


def _usage_asked(body: Any) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)
