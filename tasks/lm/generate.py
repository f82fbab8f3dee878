"""Sampling for every artifact format: rows join and leave a running batch between steps
(iteration-level, as continuous batching needs).

Every artifact format decodes through `Decoder`. Rows of a model that keeps a key/value
cache (a transformers model on the CPU, an ONNX graph exported with past key/values) feed one
new token per step; the cache of the running rows is one tensor per layer and side, rows
right-aligned and left-padded, so a row that joins is prefilled on its own and padded into
place, and a row that leaves is cut out. Rows of other formats, and rows whose sequence has
reached the model's context, recompute their last `n_positions` tokens each step (a sliding
window: a generation may be longer than the context). Both give the same tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tasks.lm.artifact import CausalLM, Past, position_ids
from tasks.lm.template import render_prompts

log = logging.getLogger(__name__)
Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Past | None],
                tuple[torch.Tensor, Past]]
FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED, FINISH_ERROR = "stop", "length", "cancelled", "error"


@dataclass(frozen=True)
class Sampling:
    """One prompt's generation settings: each row of a batch may differ."""

    max_new_tokens: int
    temperature: float = 0.8
    top_p: float = 0.95
    stop: tuple[str, ...] = ()  # texts that end the answer (not included in it)


def sample_rows(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One token per row, each row with its own temperature (0 = greedy), nucleus and
    generator, in one vectorised pass: a row's draw depends only on its own generator, not
    on which other requests share the batch."""
    greedy = logits.argmax(-1)
    probs = torch.softmax(logits / temperature.clamp(min=1e-6)[:, None], dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # Drop a token once the mass before it already reaches top_p; the first always stays.
    sorted_probs = sorted_probs * ((sorted_probs.cumsum(-1) - sorted_probs) < top_p[:, None])
    cdf = sorted_probs.cumsum(-1)
    u = torch.stack([torch.rand((), generator=g) for g in generators]) * cdf[:, -1]
    pick = (cdf < u[:, None]).sum(-1).clamp(max=logits.size(-1) - 1)
    sampled = order.gather(-1, pick[:, None]).squeeze(-1)
    return torch.where(temperature <= 0, greedy, sampled)


class TextStream:
    """The text of a growing list of token ids, handed out in pieces that never change
    afterwards: a piece never ends in a half-decoded character, never shows the start of a
    stop text, and never starts the answer with whitespace."""

    def __init__(self, tokenizer: Any, stop: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.sent = ""  # what was handed out
        self.stopped = False

    def _held(self, text: str) -> int:
        """How many trailing characters could still become a stop text."""
        return max((k for s in self.stop for k in range(1, len(s))
                    if text.endswith(s[:k])), default=0)

    def feed(self, ids: Sequence[int], final: bool) -> str:
        """The next piece given all ids so far; `final` releases what was held back."""
        raw = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        if not final and raw.endswith("\ufffd"):
            return ""  # the last token is part of a character still being built
        # Byte-level tokens can stop mid-character or pair into no character at all; what
        # does not decode is dropped rather than shown as U+FFFD.
        text = raw.lstrip().replace("\ufffd", "")
        for s in self.stop:
            cut = text.find(s, max(0, len(self.sent) - len(s)))
            if cut >= 0:
                text, final, self.stopped = text[:cut], True, True
        if not final:
            text = text[: len(text) - self._held(text)]
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            return ""
        piece, self.sent = text[len(self.sent):], text
        return piece


@dataclass(frozen=True)
class Generated:
    text: str
    tokens: int  # new tokens produced (the stop token included when it stopped there)
    finish: str = FINISH_LENGTH


@dataclass(eq=False)
class Row:
    """One sequence in flight: its prompt ids, settings, generator and what it produced."""

    prompt: list[int]
    sampling: Sampling
    generator: torch.Generator
    text: TextStream
    tag: Any = None  # the caller's handle (a request)
    generated: list[int] = field(default_factory=list)
    finish: str | None = None
    cancelled: bool = False  # set from another thread; the row leaves at the next step

    @property
    def ids(self) -> list[int]:
        return self.prompt + self.generated

    def result(self) -> Generated:
        return Generated(self.text.sent.rstrip(), len(self.generated), self.finish or "")


@dataclass(frozen=True)
class Event:
    """What a step did for one row: a new piece of text, and the reason when it ended."""

    row: Row
    piece: str
    finish: str | None
    error: str | None = None


def _dynamic_cache(past: Past | None) -> Any:
    """A transformers DynamicCache holding these tensors as they are: its own constructor
    would copy every layer once more each step."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    for keys, values in past or ():
        layer = DynamicLayer()
        layer.device, layer.keys, layer.values = keys.device, keys, values
        layer.is_initialized = True
        cache.layers.append(layer)
    return cache


def hf_step(model: Any) -> Step:
    """A transformers model as a cached step on tuples of tensors."""

    def step(ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, past: Past | None,
             ) -> tuple[torch.Tensor, Past]:
        cache = _dynamic_cache(past)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                    use_cache=True)
        return out.logits.float(), tuple((layer.keys, layer.values)
                                         for layer in out.cache.layers)
    return step


def cached_step(lm: CausalLM) -> Step | None:
    """The format's cached step, or None where it only recomputes."""
    if getattr(lm, "has_past", False):
        return lm.step  # an ONNX graph exported with past key/values
    model = getattr(lm, "incremental", None)
    return hf_step(model) if model is not None else None


def _left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
    return ids, mask


def _pad_past(past: Past, extra: int) -> Past:
    if extra == 0:
        return past
    return tuple(tuple(torch.nn.functional.pad(t, (0, 0, extra, 0)) for t in kv) for kv in past)


@dataclass
class _Cached:
    """The rows decoding with a cache: mask [B, T] (the last column is each row's newest
    token, not yet fed) and past of T - 1 columns."""

    rows: list[Row] = field(default_factory=list)
    mask: torch.Tensor | None = None
    past: Past | None = None

    def add(self, rows: Sequence[Row], mask: torch.Tensor, past: Past) -> None:
        if not self.rows:
            self.rows, self.mask, self.past = list(rows), mask, past
            return
        width = max(self.mask.shape[1], mask.shape[1])
        old, new = width - self.mask.shape[1], width - mask.shape[1]
        pad = torch.nn.functional.pad
        self.mask = torch.cat([pad(self.mask, (old, 0)), pad(mask, (new, 0))])
        self.past = tuple(tuple(torch.cat([a, b]) for a, b in zip(x, y, strict=True))
                          for x, y in zip(_pad_past(self.past, old), _pad_past(past, new),
                                          strict=True))
        self.rows += rows

    def keep(self, keep: Sequence[bool]) -> None:
        """Cut out the rows not kept, and the padding columns no kept row needs."""
        if all(keep):
            return
        index = torch.tensor([i for i, k in enumerate(keep) if k], dtype=torch.long)
        self.rows = [r for r, k in zip(self.rows, keep, strict=True) if k]
        if not self.rows:
            self.mask = self.past = None
            return
        mask = self.mask[index]
        start = int(mask.any(0).long().argmax())
        self.mask = mask[:, start:]
        self.past = tuple(tuple(t[index, :, start:] for t in kv) for kv in self.past)


class Decoder:
    """A running batch of one model. `join` prefills new rows and samples their first token;
    `step` gives every row its next token; rows that end leave at once. Not thread-safe:
    one thread drives it (rows may be cancelled from others)."""

    def __init__(self, lm: CausalLM, tokenizer: Any, stop_ids: Sequence[int],
                 hold_finished: bool = False) -> None:
        self.lm = lm
        # Request-level batching as a baseline: rows that ended stay (and compute) until
        # the whole batch has ended.
        self.hold_finished = hold_finished
        self.tokenizer = tokenizer
        self.stop_ids = frozenset(stop_ids)
        self.step_fn = cached_step(lm)
        self.pad = tokenizer.pad_token_id
        self.cached = _Cached()
        self.window: list[Row] = []  # rows that recompute their last n_positions tokens

    @property
    def rows(self) -> list[Row]:
        return self.cached.rows + self.window

    def __len__(self) -> int:
        return len(self.cached.rows) + len(self.window)

    def new_row(self, prompt_ids: Sequence[int], sampling: Sampling, generator: torch.Generator,
                tag: Any = None) -> Row:
        """A row for a tokenized prompt; a prompt too long for the context keeps its end,
        where the answer starts, leaving room for the answer."""
        n = self.lm.n_positions
        room = max(n - sampling.max_new_tokens, n // 2)
        return Row(list(prompt_ids)[-room:], sampling, generator,
                   TextStream(self.tokenizer, sampling.stop), tag)

    def _sample(self, rows: Sequence[Row], logits: torch.Tensor) -> list[Event]:
        temperature = torch.tensor([r.sampling.temperature for r in rows])
        top_p = torch.tensor([r.sampling.top_p for r in rows])
        tokens = sample_rows(logits, temperature, top_p, [r.generator for r in rows])
        return [self._advance(r, int(t)) for r, t in zip(rows, tokens, strict=True)
                if r.finish is None]

    def _advance(self, row: Row, token: int) -> Event:
        row.generated.append(token)
        if token in self.stop_ids:
            row.finish = FINISH_STOP
        elif len(row.generated) >= row.sampling.max_new_tokens:
            row.finish = FINISH_LENGTH
        visible = [t for t in row.generated if t not in self.stop_ids]
        piece = row.text.feed(visible, final=row.finish is not None)
        if row.text.stopped:
            row.finish = FINISH_STOP
        return Event(row, piece, row.finish)

    def _recompute(self, rows: Sequence[Row]) -> list[Event]:
        n = self.lm.n_positions
        ids, mask = _left_pad([r.ids[-n:] for r in rows], self.pad)
        return self._sample(rows, self.lm.logits(ids, mask)[:, -1].float())

    def _prefill(self, rows: Sequence[Row]) -> list[Event]:
        ids, mask = _left_pad([r.ids for r in rows], self.pad)
        logits, past = self.step_fn(ids, mask, position_ids(mask), None)
        events = self._sample(rows, logits[:, -1])
        self.cached.add(rows, torch.cat([mask, torch.ones(len(rows), 1, dtype=torch.long)], 1),
                        past)
        return events

    def _fits(self, row: Row) -> bool:
        return self.step_fn is not None and len(row.ids) < self.lm.n_positions

    @torch.no_grad()
    def join(self, rows: Sequence[Row]) -> list[Event]:
        """Prefill rows and sample their first token (they are in the batch afterwards)."""
        cached = [r for r in rows if self._fits(r)]
        events = self._guarded(self._prefill, cached) if cached else []
        window = [r for r in rows if not self._fits(r)]
        self.window += window
        events += self._guarded(self._recompute, window) if window else []
        return self._settle(events)

    def _step_cached(self) -> list[Event]:
        rows, mask = self.cached.rows, self.cached.mask
        last = torch.tensor([[r.generated[-1]] for r in rows])
        logits, past = self.step_fn(last, mask, mask.sum(-1, keepdim=True) - 1, self.cached.past)
        self.cached.past = past
        self.cached.mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=torch.long)], 1)
        return self._sample(rows, logits[:, -1])

    @torch.no_grad()
    def step(self) -> list[Event]:
        """Drop cancelled rows, then one token for every row."""
        events = self._drop_cancelled()
        # A row whose sequence has reached the context slides its window from now on.
        # (Its length in the cache: a held row stops growing its ids, not its cache.)
        full = ([bool(f) for f in self.cached.mask.sum(-1) >= self.lm.n_positions]
                if self.cached.rows else [])
        if any(full):
            self.window += [r for r, f in zip(self.cached.rows, full, strict=True) if f]
            self.cached.keep([not f for f in full])
        if self.cached.rows:
            events += self._guarded(lambda _: self._step_cached(), self.cached.rows)
        if self.window:
            events += self._guarded(self._recompute, self.window)
        return self._settle(events)

    def _guarded(self, run: Callable[[Sequence[Row]], list[Event]], rows: Sequence[Row],
                 ) -> list[Event]:
        """A failing batch is retried row by row, so one bad sequence fails alone."""
        try:
            return run(rows)
        except Exception as exc:  # noqa: BLE001 - isolated below, reported per row
            if len(rows) == 1:
                return [self._failed(rows[0], exc)]
            log.warning("a batch of %d rows failed (%s); retrying them one by one",
                        len(rows), exc)
        rows = list(rows)
        self._remove(rows)
        events = []
        for row in rows:  # the lone prefill rebuilds the row's state from its ids
            events += self.join([row])
        return events

    def _failed(self, row: Row, exc: Exception) -> Event:
        row.finish = FINISH_ERROR
        self._remove([row])
        return Event(row, "", FINISH_ERROR, f"{type(exc).__name__}: {exc}")

    def _remove(self, rows: Sequence[Row]) -> None:
        gone = {id(r) for r in rows}
        self.cached.keep([id(r) not in gone for r in self.cached.rows])
        self.window = [r for r in self.window if id(r) not in gone]

    def _drop_cancelled(self) -> list[Event]:
        cancelled = [r for r in self.rows if r.cancelled]
        for r in cancelled:
            r.finish = FINISH_CANCELLED
        self._remove(cancelled)
        return [Event(r, "", FINISH_CANCELLED) for r in cancelled]

    def _settle(self, events: list[Event]) -> list[Event]:
        """Rows that ended leave the batch (held: once all have ended)."""
        if not self.hold_finished:
            self._remove([e.row for e in events if e.finish is not None])
        elif all(r.finish is not None for r in self.rows):
            self._remove(self.rows)
        return events

    def run(self, rows: Sequence[Row]) -> list[Row]:
        """Decode these rows together to the end (the batch API of evaluation and scoring)."""
        self.join(rows)
        while len(self):
            self.step()
        return list(rows)


def generate_rows(lm: CausalLM, tokenizer: Any, prompts: Sequence[str],
                  sampling: Sequence[Sampling], generators: Sequence[torch.Generator],
                  stop: Sequence[int]) -> list[Generated]:
    """Prompts rendered with the tokenizer's chat template, decoded together to the end,
    each row with its own settings and generator."""
    ids = tokenizer(render_prompts(tokenizer, prompts), add_special_tokens=False)["input_ids"]
    decoder = Decoder(lm, tokenizer, stop)
    rows = [decoder.new_row(i, s, g) for i, s, g in zip(ids, sampling, generators, strict=True)]
    return [r.result() for r in decoder.run(rows)]
