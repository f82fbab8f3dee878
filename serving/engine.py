"""How one model version turns requests into text, token by token.

`ContinuousEngine` (the default) is iteration-level scheduling: one thread drives the
version's running batch; a request joins at the next step (after its prefill), a finished or
abandoned one leaves at once. `RequestEngine` is request-level batching (requests arriving
within a short window run together to the end), kept as the baseline the serving benchmark
compares against; with a batch of one it serves requests one at a time.

Both stream `Chunk`s to the event loop, so every endpoint (streaming or not) reads a
generation the same way.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from serving.batching import Batcher
from tasks.lm import GenerativeModel
from tasks.lm.generate import FINISH_CANCELLED, FINISH_ERROR, Event, Row, Sampling

log = logging.getLogger(__name__)


class Retired(LookupError):
    """The version stopped serving between routing and submitting: route again."""


@dataclass(frozen=True)
class GenItem:
    """One generation: a user prompt (rendered with the chat template), a conversation, or a
    completion prompt taken as it is (`raw`)."""

    prompt: str | tuple[Mapping[str, str], ...]
    sampling: Sampling
    seed: int
    raw: bool = False


@dataclass(frozen=True)
class Chunk:
    piece: str  # new text (may be empty)
    finish: str | None = None  # why it ended: stop, length, cancelled, error
    tokens: int = 0  # generated so far
    prompt_tokens: int = 0
    error: str | None = None


@dataclass(eq=False)
class Stream:
    """A generation's chunks as they come; `cancel` frees its slot at the next step."""

    item: GenItem
    chunks: asyncio.Queue[Chunk] = field(default_factory=asyncio.Queue)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    row: Row | None = None
    cancelled: bool = False

    def put(self, chunk: Chunk) -> None:
        """From any thread."""
        self.loop.call_soon_threadsafe(self.chunks.put_nowait, chunk)

    def cancel(self) -> None:
        self.cancelled = True
        if self.row is not None:
            self.row.cancelled = True

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        while True:
            chunk = await self.chunks.get()
            yield chunk
            if chunk.finish is not None:
                return


def _chunk(event: Event) -> Chunk:
    row = event.row
    return Chunk(event.piece, event.finish, len(row.generated), len(row.prompt), event.error)


class ContinuousEngine:
    """A thread that keeps one version's running batch stepping while it has rows."""

    def __init__(self, model: GenerativeModel, *, max_rows: int, name: str,
                 on_step: Callable[[int], None] = lambda rows: None) -> None:
        self.model = model
        self.max_rows = max_rows
        self.on_step = on_step
        self.decoder = model.decoder()
        self._inbox: queue.SimpleQueue[Stream] = queue.SimpleQueue()
        self._retired = threading.Event()
        self._lock = threading.Lock()  # a submit and the thread's exit never cross
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"decode-{name}", daemon=True)
        self._thread.start()

    def submit(self, item: GenItem) -> Stream:
        stream = Stream(item)
        with self._lock:
            if self._closed:
                raise Retired("this model version is no longer served")
            self._inbox.put(stream)
        return stream

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def retire(self) -> None:
        """Finish what was accepted, then end the thread (new submits are refused then)."""
        self._retired.set()

    @property
    def active(self) -> int:
        return len(self.decoder)

    def _admit(self, streams: Sequence[Stream]) -> list[Row]:
        rows = []
        for stream in streams:
            if stream.cancelled:
                stream.put(Chunk("", FINISH_CANCELLED))
                continue
            item = stream.item
            try:
                ids = self.model.prompt_ids(item.prompt, item.raw)
            except Exception as exc:  # noqa: BLE001 - this request alone is bad
                stream.put(Chunk("", FINISH_ERROR, error=f"{type(exc).__name__}: {exc}"))
                continue
            stream.row = self.decoder.new_row(ids, item.sampling,
                                              torch.Generator().manual_seed(item.seed), stream)
            stream.row.cancelled = stream.cancelled
            rows.append(stream.row)
        return rows

    def _waiting(self) -> list[Stream]:
        waiting: list[Stream] = []
        if not len(self.decoder):
            try:  # idle: block until work comes (or the version is retired)
                waiting.append(self._inbox.get(timeout=0.2))
            except queue.Empty:
                return []
        while len(self.decoder) + len(waiting) < self.max_rows:
            try:
                waiting.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        return waiting

    def _loop(self) -> None:
        while True:
            waiting = self._waiting()
            if not waiting and not len(self.decoder):
                if self._retired.is_set():
                    with self._lock:
                        if self._inbox.empty():
                            self._closed = True
                            return
                continue
            try:
                events = self.decoder.join(self._admit(waiting)) if waiting else []
                if len(self.decoder):
                    self.on_step(len(self.decoder))
                    events += self.decoder.step()
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any bug
                log.exception("decoding failed outside a model call")
                events = [Event(r, "", FINISH_ERROR, f"{type(exc).__name__}: {exc}")
                          for r in self.decoder.rows]
                self.decoder = self.model.decoder()
            for event in events:
                event.row.tag.put(_chunk(event))


class RequestEngine:
    """Request-level batching: each batch runs, every row computing, to its longest
    request's end; requests arriving meanwhile wait for the next batch."""

    def __init__(self, model: GenerativeModel, *, max_rows: int, max_wait_s: float, name: str,
                 on_step: Callable[[int], None] = lambda rows: None) -> None:
        self.model = model
        self.on_step = on_step
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"decode-{name}")
        self.batcher: Batcher[Stream, Chunk] = Batcher(
            self._run, max_batch=max_rows, max_wait_s=max_wait_s, executor=self.executor)
        self.active = 0
        self.running = True
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _run(self, streams: Sequence[Stream]) -> list[Chunk]:
        decoder = self.model.decoder(hold_finished=True)
        failed: dict[int, Chunk] = {}
        for i, s in enumerate(streams):
            try:
                ids = self.model.prompt_ids(s.item.prompt, s.item.raw)
            except Exception as exc:  # noqa: BLE001 - this request alone is bad
                failed[i] = Chunk("", FINISH_ERROR, error=f"{type(exc).__name__}: {exc}")
                continue
            s.row = decoder.new_row(ids, s.item.sampling,
                                    torch.Generator().manual_seed(s.item.seed), s)
        rows = [s.row for i, s in enumerate(streams) if i not in failed]
        errors = {id(e.row): e.error for e in decoder.join(rows) if e.error}
        self.active = len(decoder)
        while len(decoder):
            self.on_step(len(decoder))
            errors |= {id(e.row): e.error for e in decoder.step() if e.error}
        self.active = 0
        return [failed.get(i) or Chunk(s.row.text.sent, s.row.finish, len(s.row.generated),
                                       len(s.row.prompt), errors.get(id(s.row)))
                for i, s in enumerate(streams)]

    def submit(self, item: GenItem) -> Stream:
        if self._closed:
            raise Retired("this model version is no longer served")
        self._loop = asyncio.get_running_loop()
        stream = Stream(item)

        async def run() -> None:
            try:
                stream.put(await self.batcher.submit(stream))
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets it
                stream.put(Chunk("", FINISH_ERROR, error=f"{type(exc).__name__}: {exc}"))

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return stream

    def retire(self) -> None:
        self._closed = True
        if self._loop is None:  # never used: no batcher task was started
            self._stop()
        else:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop)

    async def _close(self) -> None:
        while self._tasks:  # requests routed here just before retirement finish first
            await asyncio.wait(set(self._tasks))
        await self.batcher.close()
        self._stop()

    def _stop(self) -> None:
        self.executor.shutdown(wait=False)
        self.running = False


Engine = ContinuousEngine | RequestEngine
