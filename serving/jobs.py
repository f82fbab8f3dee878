"""Async generation jobs: POST enqueues, workers process, GET polls.

In-process queue by default; Redis streams (a consumer group, so several replicas share
the work and a job is acked only once its result is stored) when AIGC_REDIS_URL is set."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from serving.redis_tier import RedisTier
from tasks.feedback.store import now

log = logging.getLogger(__name__)
# (request, key id of the client that queued it) -> result
Handler = Callable[[dict[str, Any], str | None], Awaitable[dict[str, Any]]]
STREAM, GROUP = "aigc:jobs", "aigc-workers"
RESULT_TTL_S = 86_400


class MemoryJobs:
    def __init__(self) -> None:
        self._jobs: dict[str, dict[str, Any]] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def submit(self, request: dict[str, Any], key_id: str | None = None) -> str:
        job_id = uuid.uuid4().hex
        self._jobs[job_id] = {"job_id": job_id, "status": "queued", "created_at": now(),
                              "request": request, "key_id": key_id}
        await self._queue.put(job_id)
        return job_id

    async def get(self, job_id: str) -> dict[str, Any] | None:
        return self._jobs.get(job_id)

    async def depth(self) -> int:
        return self._queue.qsize()

    async def _work(self, handler: Handler) -> None:
        while True:
            job_id = await self._queue.get()
            job = self._jobs[job_id]
            job["status"] = "running"
            job.update(await _outcome(handler, job))

    def start(self, handler: Handler, workers: int) -> None:
        self._tasks = [asyncio.create_task(self._work(handler)) for _ in range(workers)]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _outcome(handler: Handler, job: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"status": "done", "result": await handler(job["request"], job.get("key_id")),
                "finished_at": now()}
    except Exception as exc:  # noqa: BLE001 - the job records why it failed
        log.warning("job failed: %s", exc)
        return {"status": "failed", "error": str(exc), "finished_at": now()}


class RedisJobs:
    """Jobs in Redis. Submits, polls and the queue depth go through the shared tier (short
    timeouts, circuit breaker: RedisUnavailable when Redis is down, which the API answers
    with 503); the workers keep their own connection for blocking reads and outlive any
    Redis error: they wait, reconnect, recreate the consumer group a restarted Redis lost,
    and go on."""

    def __init__(self, tier: RedisTier, consumer: str | None = None,
                 retry_s: tuple[float, float] = (0.2, 5.0)) -> None:
        import redis.asyncio as redis

        self.tier = tier
        self._worker = redis.Redis.from_url(tier.url, decode_responses=True, socket_timeout=5,
                                            socket_connect_timeout=2)
        self._consumer = consumer or uuid.uuid4().hex[:12]
        self._retry_s = retry_s
        self._tasks: list[asyncio.Task[None]] = []

    async def _save(self, client: Any, job_id: str, job: dict[str, Any]) -> None:
        await client.set(f"aigc:job:{job_id}", json.dumps(job, ensure_ascii=False),
                         ex=RESULT_TTL_S)

    async def submit(self, request: dict[str, Any], key_id: str | None = None) -> str:
        job_id = uuid.uuid4().hex
        job = {"job_id": job_id, "status": "queued", "created_at": now(), "request": request,
               "key_id": key_id}

        async def enqueue(r: Any) -> None:
            # The status record exists before the stream entry, so a fast worker can update it.
            await self._save(r, job_id, job)
            await r.xadd(STREAM, {"job_id": job_id})

        await self.tier.call(enqueue)
        return job_id

    async def get(self, job_id: str) -> dict[str, Any] | None:
        raw = await self.tier.call(lambda r: r.get(f"aigc:job:{job_id}"))
        return json.loads(raw) if raw else None

    async def depth(self) -> int:
        groups = await self.tier.call(lambda r: r.xinfo_groups(STREAM))
        return sum(int(g.get("lag") or 0) for g in groups if _text(g["name"]) == GROUP)

    async def _ensure_group(self) -> None:
        from redis.exceptions import ResponseError

        try:
            await self._worker.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # another replica created it first
                raise

    async def _next(self) -> list[tuple[str, dict[str, str]]]:
        # Entries another replica took and never acked (it died) come back after a minute.
        claimed = await self._worker.xautoclaim(STREAM, GROUP, self._consumer,
                                                min_idle_time=60_000, count=1)
        if claimed and claimed[1]:
            return claimed[1]
        read = await self._worker.xreadgroup(GROUP, self._consumer, {STREAM: ">"}, count=1,
                                             block=1000)
        return read[0][1] if read else []

    async def _handle(self, handler: Handler, entry_id: str, fields: dict[str, str]) -> None:
        raw = await self._worker.get(f"aigc:job:{fields['job_id']}")
        job = json.loads(raw) if raw else None
        if job is not None and job["status"] in ("queued", "running"):
            await self._save(self._worker, job["job_id"], job | {"status": "running"})
            await self._save(self._worker, job["job_id"],
                             job | await _outcome(handler, job))
        await self._worker.xack(STREAM, GROUP, entry_id)

    async def _work(self, handler: Handler) -> None:
        from redis.exceptions import ResponseError

        pause = self._retry_s[0]
        ready = False
        while True:
            try:
                if not ready:
                    await self._ensure_group()
                    ready = True
                for entry_id, fields in await self._next():
                    await self._handle(handler, entry_id, fields)
                pause = self._retry_s[0]
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the worker must outlive Redis outages
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    ready = False  # a restarted Redis lost the stream and its group
                log.warning("job worker: Redis error (%s: %s); retrying in %.1fs",
                            type(exc).__name__, exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, self._retry_s[1])

    def start(self, handler: Handler, workers: int) -> None:
        self._tasks = [asyncio.create_task(self._work(handler)) for _ in range(workers)]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._worker.aclose()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
