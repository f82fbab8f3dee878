"""Sampling: one batched loop for every artifact format, with a key/value cache where the
model keeps one, each row with its own settings, generator and stop tokens."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tasks.lm.artifact import CausalLM, position_ids
from tasks.lm.template import render_prompts


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


@dataclass(frozen=True)
class Sampling:
    """One prompt's generation settings: each row of a batch may differ."""

    max_new_tokens: int
    temperature: float = 0.8
    top_p: float = 0.95


@dataclass(frozen=True)
class Generated:
    text: str
    tokens: int  # new tokens produced (the stop token included when it stopped there)


def _next_logits(lm: CausalLM, width: int, longest: int,
                 ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A function (ids, mask) -> last-position logits for the growing batch.

    With a key/value cache (a transformers model, and the whole generation fits the
    context) each step feeds only the new token; otherwise the whole window is recomputed
    (any format, and a window that slides past the context)."""
    model = getattr(lm, "incremental", None)
    n = lm.n_positions
    if model is None or width + longest > n:
        return lambda ids, mask: lm.logits(ids[:, -n:], mask[:, -n:])[:, -1].float()
    past = None

    def step(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        nonlocal past
        new = slice(None) if past is None else slice(-1, None)
        out = model(input_ids=ids[:, new], attention_mask=mask,
                    position_ids=position_ids(mask)[:, new], cache=past, use_cache=True)
        past = out.cache
        return out.logits[:, -1].float()
    return step


@torch.no_grad()
def generate_rows(lm: CausalLM, tokenizer, prompts: Sequence[str], sampling: Sequence[Sampling],
                  generators: Sequence[torch.Generator], stop: Sequence[int]) -> list[Generated]:
    """One left-padded batch of prompts, rendered with the tokenizer's chat template, each
    row sampled with its own settings and generator until a `stop` token or its limit.

    Formats that only give logits (ONNX, exported graphs) recompute the context per token;
    transformers models keep a key/value cache. Past the model's context the window slides,
    so a generation may be longer than the context; a long prompt keeps its end."""
    longest = max(s.max_new_tokens for s in sampling)
    n = lm.n_positions
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"  # a long prompt keeps its end, where the reply starts
    enc = tokenizer(render_prompts(tokenizer, prompts), add_special_tokens=False,
                    padding=True, truncation=True, max_length=max(n - longest, n // 2),
                    return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    start = ids.shape[1]
    limits = torch.tensor([s.max_new_tokens for s in sampling])
    temperature = torch.tensor([s.temperature for s in sampling])
    top_p = torch.tensor([s.top_p for s in sampling])
    stops = torch.tensor(list(stop), dtype=torch.long)
    produced = torch.zeros(len(ids), dtype=torch.long)
    done = limits <= 0
    next_logits = _next_logits(lm, start, longest)
    for _ in range(longest):
        logits = next_logits(ids, mask)
        step = sample_rows(logits, temperature, top_p, generators)
        step[done] = tokenizer.pad_token_id
        produced += (~done).long()
        ids = torch.cat([ids, step[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(step[:, None])], dim=1)
        done |= torch.isin(step, stops) | (produced >= limits)
        if done.all():
            break
    texts = tokenizer.batch_decode(ids[:, start:], skip_special_tokens=True)
    # Byte-level tokens can stop mid-character or pair into no character at all; what does
    # not decode is dropped rather than shown as U+FFFD.
    return [Generated(text=t.replace("\ufffd", "").strip(), tokens=int(k))
            for t, k in zip(texts, produced, strict=True)]
