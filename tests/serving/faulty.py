"""Broken model versions for rollout tests: a real model wrapped to raise or to stall."""

from __future__ import annotations

import time

import torch


class Faulty(torch.nn.Module):
    """LogitsOf's signature; `mode` 'raise' fails every forward, 'slow' sleeps first."""

    def __init__(self, inner: torch.nn.Module, mode: str, delay_s: float = 0.05) -> None:
        super().__init__()
        self.inner, self.mode, self.delay_s = inner, mode, delay_s

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> torch.Tensor:
        if self.mode == "raise":
            raise RuntimeError("injected fault: this model version is broken")
        time.sleep(self.delay_s)
        return self.inner(input_ids, attention_mask, position_ids)
