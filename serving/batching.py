"""Dynamic batching: requests arriving within a short window share one batched generate."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")  # one request
R = TypeVar("R")  # its result


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R] = field(default_factory=lambda: asyncio.get_running_loop()
                                      .create_future())


class Batcher(Generic[T, R]):
    """Collects up to `max_batch` requests, waiting at most `max_wait_s` after the first,
    and runs them as one call of `run` on `executor` (one thread: a model's batches run in
    order, and requests arriving meanwhile form the next batch). A failing batch fails each
    of its requests."""

    def __init__(self, run: Callable[[Sequence[T]], Sequence[R]], *, max_batch: int,
                 max_wait_s: float, executor: Executor,
                 on_batch: Callable[[int], None] = lambda n: None) -> None:
        self.run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.executor = executor
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Pending[T, R]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        if self._task is None:
            self._task = asyncio.create_task(self._loop())
        pending: _Pending[T, R] = _Pending(item)
        await self._queue.put(pending)
        return await pending.future

    async def _collect(self) -> list[_Pending[T, R]]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            # Whatever queued while the last batch ran joins without waiting.
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [p for p in batch if not p.future.done()]  # cancelled clients drop out
            if not live:
                continue
            self.on_batch(len(live))
            try:
                results = await loop.run_in_executor(self.executor, self.run,
                                                     [p.item for p in live])
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets it
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            for p, result in zip(live, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
