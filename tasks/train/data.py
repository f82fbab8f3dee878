"""Token blocks for causal-LM training and a step-addressable batch order."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from tasks.lm.template import IGNORE, encode_pairs


@dataclass(frozen=True)
class Blocks:
    """Packed [n, block_size] token ids and their labels (IGNORE where no loss is taken)."""

    ids: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: torch.Tensor | slice) -> Blocks:
        return Blocks(self.ids[index], self.labels[index])

    def to(self, device: torch.device | str) -> Blocks:
        return Blocks(self.ids.to(device), self.labels.to(device))


def token_blocks(frame: pd.DataFrame, tokenizer, block_size: int, loss_on_prompt: bool = False,
                 ) -> Blocks:
    """Concatenate all pairs (rendered with the tokenizer's chat template) and cut them into
    [n, block_size] blocks; the prompts' tokens carry no loss unless `loss_on_prompt`.

    Packing wastes no compute on padding; a short split still yields one (padded) block.
    """
    pairs = frame[["prompt", "response"]].itertuples(index=False, name=None)
    ids: list[int] = []
    labels: list[int] = []
    for prompt, response in encode_pairs(tokenizer, pairs):
        ids += prompt + response
        labels += (prompt if loss_on_prompt else [IGNORE] * len(prompt)) + response
    n = len(ids) // block_size
    if n == 0:
        pad = block_size - len(ids)
        ids, labels = ids + [tokenizer.pad_token_id] * pad, labels + [IGNORE] * pad
        n = 1
    size = n * block_size
    return Blocks(torch.tensor(ids[:size], dtype=torch.long).view(n, block_size),
                  torch.tensor(labels[:size], dtype=torch.long).view(n, block_size))


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
