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

from tasks.feedback.store import now

log = logging.getLogger(__name__)
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
STREAM, GROUP = "aigc:jobs", "aigc-workers"
RESULT_TTL_S = 86_400


class MemoryJobs:
    def __init__(self) -> None:
        self._jobs: dict[str, dict[str, Any]] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def submit(self, request: dict[str, Any]) -> str:
        job_id = uuid.uuid4().hex
        self._jobs[job_id] = {"job_id": job_id, "status": "queued", "created_at": now(),
                              "request": request}
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
            job.update(await _outcome(handler, job["request"]))

    def start(self, handler: Handler, workers: int) -> None:
        self._tasks = [asyncio.create_task(self._work(handler)) for _ in range(workers)]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _outcome(handler: Handler, request: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"status": "done", "result": await handler(request), "finished_at": now()}
    except Exception as exc:  # noqa: BLE001 - the job records why it failed
        log.warning("job failed: %s", exc)
        return {"status": "failed", "error": str(exc), "finished_at": now()}


class RedisJobs:
    def __init__(self, url: str, consumer: str | None = None) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url, decode_responses=True)
        self._consumer = consumer or uuid.uuid4().hex[:12]
        self._tasks: list[asyncio.Task[None]] = []

    async def _save(self, job_id: str, job: dict[str, Any]) -> None:
        await self._redis.set(f"aigc:job:{job_id}", json.dumps(job, ensure_ascii=False),
                              ex=RESULT_TTL_S)

    async def submit(self, request: dict[str, Any]) -> str:
        job_id = uuid.uuid4().hex
        # The status record exists before the stream entry, so a fast worker can update it.
        await self._save(job_id, {"job_id": job_id, "status": "queued", "created_at": now(),
                                  "request": request})
        await self._redis.xadd(STREAM, {"job_id": job_id})
        return job_id

    async def get(self, job_id: str) -> dict[str, Any] | None:
        raw = await self._redis.get(f"aigc:job:{job_id}")
        return json.loads(raw) if raw else None

    async def depth(self) -> int:
        groups = await self._redis.xinfo_groups(STREAM)
        return sum(int(g.get("lag") or 0) for g in groups if g["name"] == GROUP)

    async def _work(self, handler: Handler) -> None:
        while True:
            # Entries another replica took and never acked (it died) come back after a minute.
            claimed = await self._redis.xautoclaim(STREAM, GROUP, self._consumer,
                                                   min_idle_time=60_000, count=1)
            entries = claimed[1] if claimed and claimed[1] else []
            if not entries:
                read = await self._redis.xreadgroup(GROUP, self._consumer, {STREAM: ">"},
                                                    count=1, block=1000)
                entries = read[0][1] if read else []
            for entry_id, fields in entries:
                job = await self.get(fields["job_id"])
                if job is not None and job["status"] in ("queued", "running"):
                    await self._save(job["job_id"], job | {"status": "running"})
                    await self._save(job["job_id"],
                                     job | await _outcome(handler, job["request"]))
                await self._redis.xack(STREAM, GROUP, entry_id)

    def start(self, handler: Handler, workers: int) -> None:
        async def begin() -> None:
            from redis.exceptions import ResponseError

            try:
                await self._redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):  # another replica created it first
                    raise
            await asyncio.gather(*(self._work(handler) for _ in range(workers)))

        self._tasks = [asyncio.create_task(begin())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._redis.aclose()
