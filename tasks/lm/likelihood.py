"""Likelihood: the training loss over labelled tokens and held-out perplexity of answers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tasks.lm.artifact import CausalLM
from tasks.lm.template import IGNORE, encode_pairs


def lm_loss(logits: torch.Tensor, labels: torch.Tensor,
            count: float | torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy summed over labelled positions and divided by `count`
    (default: the labelled positions here). A distributed step passes the labelled
    positions of the whole global batch divided by the world size, so averaging the ranks'
    gradients gives exactly the global batch's mean, however the labels fall per shard;
    a batch with nothing labelled gives 0, not NaN."""
    target = labels[:, 1:]
    total = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.size(-1)), target.reshape(-1),
        ignore_index=IGNORE, reduction="sum")
    n = (target != IGNORE).sum() if count is None else count
    return total / max(float(n), 1.0)


def labelled(labels: torch.Tensor) -> int:
    """Positions that carry a loss (the first position predicts nothing)."""
    return int((labels[:, 1:] != IGNORE).sum())


@dataclass(frozen=True)
class Likelihood:
    """Held-out likelihood of the answers given their prompts: per token (this model's
    tokenizer) and per character, which compares models whose tokenizers differ."""

    nll: float
    tokens: int
    chars: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / max(self.tokens, 1))

    @property
    def char_perplexity(self) -> float:
        return math.exp(self.nll / self.chars)


def _fit(prompt: list[int], response: list[int], n: int) -> tuple[list[int], int]:
    """Prompt + response within n tokens: the answer's start is kept (cut at its end), the
    prompt loses its beginning; returns the ids and how many of them are answer."""
    answer = response[: n - 1]
    context = prompt[-(n - len(answer)):]
    return context + answer, len(answer)


@torch.no_grad()
def likelihood(lm: CausalLM, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 16,
               window: int | None = None) -> Likelihood:
    """Sum of next-token NLL of each answer given its prompt (both rendered with the chat
    template, as in training and serving), within `window` tokens (the model's context by
    default). Models compared with each other must be scored in the same window: a longer
    one sees more of the prompt."""
    n = min(lm.n_positions, window or lm.n_positions)
    nll, tokens, chars = 0.0, 0, 0
    special = set(tokenizer.all_special_ids)
    encoded = encode_pairs(tokenizer, pairs)
    for i in range(0, len(encoded), batch_size):
        rows = [_fit(p, r, n) for p, r in encoded[i: i + batch_size]]
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, IGNORE)
        for j, (row, answer) in enumerate(rows):
            ids[j, : len(row)] = torch.tensor(row)
            mask[j, : len(row)] = 1
            labels[j, len(row) - answer: len(row)] = ids[j, len(row) - answer: len(row)]
            scored = row[len(row) - answer:]
            # Characters of the answer scored; a special token (end of turn) counts as one.
            chars += len(tokenizer.decode(scored, skip_special_tokens=True)) + sum(
                t in special for t in scored)
        nll += lm_loss(lm.logits(ids, mask), labels, count=1).item()
        tokens += labelled(labels)
    return Likelihood(nll=nll, tokens=tokens, chars=max(chars, 1))


@torch.no_grad()
def block_loss(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor,
               batch_size: int) -> float:
    """Mean next-token loss over the labelled positions of packed blocks."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(ids), batch_size):
        batch_labels = labels[i: i + batch_size]
        total += lm_loss(model(input_ids=ids[i: i + batch_size]).logits, batch_labels,
                         count=1).item()
        count += labelled(batch_labels)
    return total / max(count, 1)
