"""Token blocks for causal-LM training and a step-addressable batch order."""

from __future__ import annotations

import pandas as pd
import torch

from tasks.text import format_example


def token_blocks(frame: pd.DataFrame, tokenizer, block_size: int) -> torch.Tensor:
    """Concatenate all formatted dialogs and cut them into [n, block_size] blocks.

    Packing wastes no compute on padding; a short split still yields one (padded) block.
    """
    texts = [format_example(p, r) for p, r in frame[["prompt", "response"]].values]
    ids: list[int] = []
    for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
    n = len(ids) // block_size
    if n == 0:
        ids = ids + [tokenizer.eos_token_id] * (block_size - len(ids))
        n = 1
    return torch.tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size)


def shard(indices: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """This rank's share of a global batch: disjoint across ranks, together the whole batch."""
    return indices[rank::size]


def batch_indices(step: int, n_blocks: int, batch_size: int, seed: int) -> torch.Tensor:
    """Block indices of one step, a pure function of the step.

    Each epoch is a seeded permutation, so a resumed run continues at exactly the batch an
    uninterrupted run would have drawn, with no sampler state to checkpoint.
    """
    start = step * batch_size
    epoch, offset = divmod(start, n_blocks)
    out: list[torch.Tensor] = []
    while sum(len(o) for o in out) < batch_size:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n_blocks, generator=g)
        take = perm[offset: offset + batch_size - sum(len(o) for o in out)]
        out.append(take)
        epoch, offset = epoch + 1, 0
    return torch.cat(out)
