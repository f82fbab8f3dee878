"""One generation from routing to record, shared by the native and the OpenAI endpoints:
pick the version (canary weight, sticky user, or a pinned alias or version), answer from the
cache or the version's engine, count it, and store the request that feedback will name."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException

from serving.cache import ResponseCache, cache_key, is_deterministic
from serving.engine import Chunk, GenItem, Retired
from serving.limits import Limits
from serving.observe import note
from serving.pool import LoadedModel, ModelPool
from serving.settings import ServerSettings
from serving.telemetry import Telemetry
from tasks.data.pii import mask_text
from tasks.feedback.identity import user_ref
from tasks.feedback.store import FeedbackStore, RequestRecord
from tasks.lm.generate import FINISH_CANCELLED, FINISH_ERROR
from tasks.text import distinct_n

log = logging.getLogger(__name__)
MAX_SEED = 2**31 - 1


@dataclass
class Generation:
    """A routed request: who answers it, and its text as it comes."""

    request_id: str
    route: str
    model: LoadedModel
    item: GenItem
    params: dict[str, Any]  # as the caller gave them (the seed only when it gave one)
    record_prompt: str  # what the request log stores as the prompt (masked there)
    sticky: str | None
    key_id: str | None  # the client's, charged for the tokens generated
    cache_key: str | None
    cached: dict[str, Any] | None = None
    cache_tier: str | None = None
    started: float = field(default_factory=time.perf_counter)
    first_token_s: float | None = None
    text: str = ""
    tokens: int = 0
    prompt_tokens: int = 0
    finish: str | None = None
    error: str | None = None

    @property
    def version(self) -> str:
        return self.model.version

    def headers(self) -> dict[str, str]:
        return {"X-Request-Id": self.request_id, "X-Model-Version": self.version}


class Service:
    def __init__(self, settings: ServerSettings, pool: ModelPool, cache: ResponseCache,
                 store: FeedbackStore, telemetry: Telemetry, limits: Limits) -> None:
        self.settings = settings
        self.pool = pool
        self.cache = cache
        self.store = store
        self.telemetry = telemetry
        self.limits = limits
        self._background: set[asyncio.Task[None]] = set()

    def route(self, sticky: str | None, pinned: str | None = None) -> tuple[str, LoadedModel]:
        """(route, model): by the canary weight, or the alias or version a client pinned."""
        try:
            if pinned is None:
                return self.pool.pick(sticky, random.random())
            return self.pool.pinned(pinned)
        except LookupError as exc:
            raise HTTPException(503, str(exc)) from None

    async def begin(self, item: GenItem, params: dict[str, Any], record_prompt: str,
                    sticky: str | None, key_id: str | None,
                    pinned: str | None = None) -> Generation:
        """Route a request and look it up in the cache (deterministic requests only)."""
        route, model = self.route(sticky, pinned)
        key = None
        if is_deterministic(params["temperature"], params.get("seed")):
            key = cache_key(model.version, item.prompt, params)
        gen = Generation(uuid.uuid4().hex, route, model, item, params, record_prompt, sticky,
                         key_id, key)
        note(request_id=gen.request_id, model_version=model.version, route=route)
        if key:
            gen.cached, gen.cache_tier = await self.cache.get(key)
            self.telemetry.cache.labels(gen.cache_tier or "miss").inc()
        return gen

    async def chunks(self, gen: Generation) -> AsyncIterator[Chunk]:
        """The generation's chunks; the request is recorded before the last one is given
        (so feedback can name it as soon as the client has the answer), or in the
        background when the client went away."""
        if gen.cached is not None:
            gen.text, gen.tokens = gen.cached["text"], gen.cached["tokens"]
            gen.finish = gen.cached.get("finish", "stop")
            await self._finish(gen)
            yield Chunk(gen.text, gen.finish, gen.tokens)
            return
        stream = self._submit(gen)
        try:
            async for chunk in stream:
                if gen.first_token_s is None and chunk.tokens:
                    gen.first_token_s = time.perf_counter() - gen.started
                gen.text += chunk.piece
                gen.tokens, gen.prompt_tokens = chunk.tokens, chunk.prompt_tokens
                if chunk.finish is not None:
                    gen.finish, gen.error = chunk.finish, chunk.error
                    await self._finish(gen)
                yield chunk
        finally:
            if gen.finish is None:  # the client went away: free the slot, keep the record
                stream.cancel()
                gen.finish = FINISH_CANCELLED
                self._in_background(self._finish(gen))

    def _submit(self, gen: Generation):
        try:
            return gen.model.engine.submit(gen.item)
        except Retired:  # the alias moved between routing and submitting
            gen.route, gen.model = self.route(gen.sticky)
            return gen.model.engine.submit(gen.item)

    async def complete(self, gen: Generation) -> Generation:
        """The whole generation (non-streaming endpoints)."""
        async for _ in self.chunks(gen):
            pass
        return gen

    def _in_background(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _finish(self, gen: Generation) -> None:
        latency = time.perf_counter() - gen.started
        cached = gen.cache_tier is not None
        self._count(gen, latency)
        self._note(gen)
        if not cached and gen.key_id:
            await self.limits.charge(gen.key_id, gen.tokens)
        if gen.finish not in (FINISH_ERROR, FINISH_CANCELLED) and not cached and gen.cache_key:
            await self.cache.put(gen.cache_key, {"text": gen.text, "tokens": gen.tokens,
                                                 "finish": gen.finish})
        error = gen.error if gen.finish == FINISH_ERROR else (
            f"cancelled: the client went away after {gen.tokens} tokens"
            if gen.finish == FINISH_CANCELLED else None)
        await asyncio.to_thread(self.store.log_request, RequestRecord(
            request_id=gen.request_id, model_name=self.settings.model_name,
            model_version=gen.version, route=gen.route,
            user_id=user_ref(gen.sticky, self.settings.user_hash_key) if gen.sticky else None,
            prompt=gen.record_prompt, response=None if error else gen.text,
            params=gen.params, tokens=0 if error or cached else gen.tokens,
            latency_ms=latency * 1000, cached=cached, status="error" if error else "ok",
            error=error))

    def _note(self, gen: Generation) -> None:
        note(tokens=gen.tokens, prompt_tokens=gen.prompt_tokens, finish=gen.finish,
             cache=gen.cache_tier or ("miss" if gen.cache_key else None), error=gen.error)
        if self.settings.log_prompts:
            note(prompt=mask_text(gen.record_prompt), response=mask_text(gen.text))

    def _count(self, gen: Generation, latency: float) -> None:
        t, version = self.telemetry, gen.version
        t.requests.labels(version, gen.route).inc()
        t.latency.labels(version).observe(latency)
        t.samples.add(version, latency)
        if gen.finish == FINISH_ERROR:
            log.error("version %s failed: %s", version, gen.error)
            t.errors.labels(version, gen.route).inc()
        elif gen.finish == FINISH_CANCELLED:
            t.cancelled.labels(version).inc()
        elif gen.cache_tier is None:
            t.tokens.labels(version).inc(gen.tokens)
            t.diversity.labels(version).observe(distinct_n([gen.text], 1))
            if gen.first_token_s is not None:
                t.first_token.labels(version).observe(gen.first_token_s)
