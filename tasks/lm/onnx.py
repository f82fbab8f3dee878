"""ONNX artifacts with past key/values: the export and the onnxruntime model that runs them.

The graph is one decoding step of the model on flat tensors:
- in: `input_ids` and `position_ids` [batch, new], `attention_mask` [batch, past + new] (left
  padding allowed) and, per layer i, `past_key_values.i.key` / `.value`
  [batch, kv_heads, past, head_dim];
- out: `logits` [batch, new, vocab] and `present.i.key` / `.value` (past + new).
Batch, new length and past length are all dynamic, and a zero-length past is a prefill, so
one graph serves scoring a whole context, prefilling a prompt and decoding one token per
step. The key/value layout is the one transformers' DynamicCache keeps per layer, so a cache
moves between this graph and the transformers model unchanged.

A graph exported without past inputs still loads (`has_past` False) and only recomputes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.lm.artifact import INPUT_NAMES, Past, position_ids

SIDES = ("key", "value")
OPSET = 17


def cache_names(prefix: str, n_layers: int) -> list[str]:
    """`prefix.i.key`, `prefix.i.value` for every layer i, in the graph's order."""
    return [f"{prefix}.{i}.{side}" for i in range(n_layers) for side in SIDES]


class CacheStep(torch.nn.Module):
    """A causal LM as one decoding step on flat tensors, (ids, mask, positions, key 0,
    value 0, key 1, ...) -> (logits, present key 0, present value 0, ...), for the tracer.

    The past becomes the DynamicCache that the model's own attention appends to, so the
    traced graph is the model's cached forward whatever the architecture. A cache built
    without the model's config keeps every layer's whole past (a sliding-window layer's
    mask applies its window), as transformers does for a DynamicCache built that way.
    Without past tensors it is a prefill (ModelOpt calibrates through it that way)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=list(zip(past[0::2], past[1::2], strict=True)))
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, cache=cache, use_cache=True)
        return (out.logits, *(t for layer in out.cache.layers for t in (layer.keys, layer.values)))


def export_onnx(step: CacheStep, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                path: Path) -> None:
    """Export `step` (plain, or carrying ModelOpt's quantizers) with dynamic batch, new
    length and past length, traced on an example batch of at least 3 tokens.

    The trace runs the example's last two tokens on a past made of its first ones: traced
    control flow (the cache's length, grouped-query attention's single-token path) then
    follows a step with a past and several new tokens, the general case; a zero-length past
    and a single new token are sizes the same graph takes. The TorchScript exporter
    (dynamo=False) is the one that turns ModelOpt's quantizers into QuantizeLinear/
    DequantizeLinear pairs."""
    step.eval()  # the exporter restores the module's mode afterwards: make it inference's
    positions = position_ids(attention_mask)
    split = input_ids.shape[1] - 2
    with torch.no_grad():
        past = step(input_ids[:, :split], attention_mask[:, :split], positions[:, :split])[1:]
    n_layers = len(past) // 2
    inputs, outputs = cache_names("past_key_values", n_layers), cache_names("present", n_layers)
    new, total = {0: "batch", 1: "new"}, {0: "batch", 1: "total"}
    axes = {"input_ids": new, "position_ids": new, "attention_mask": total, "logits": new}
    axes |= {name: {0: "batch", 2: "past"} for name in inputs}
    axes |= {name: {0: "batch", 2: "total"} for name in outputs}
    torch.onnx.export(step, (input_ids[:, split:], attention_mask, positions[:, split:], *past),
                      str(path), input_names=[*INPUT_NAMES, *inputs],
                      output_names=["logits", *outputs], dynamic_axes=axes,
                      opset_version=OPSET, dynamo=False)


@dataclass
class OnnxLM:
    """An ONNX graph in onnxruntime on the CPU. Tensors in and out are CPU torch tensors,
    shared with onnxruntime's buffers rather than copied (contiguous inputs are read in
    place, outputs are views of what onnxruntime allocated)."""

    session: Any
    n_positions: int
    past_names: list[str] = field(init=False)
    cache_shape: tuple[int, int] = field(init=False)  # (kv_heads, head_dim); (0, 0): no past

    def __post_init__(self) -> None:
        inputs = self.session.get_inputs()[len(INPUT_NAMES):]
        self.past_names = [i.name for i in inputs]
        self.cache_shape = (inputs[0].shape[1], inputs[0].shape[3]) if inputs else (0, 0)

    @classmethod
    def load(cls, path: Path, n_positions: int) -> OnnxLM:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Idle intra-op threads otherwise busy-wait for the next run: between two decoding
        # steps (sampling, streaming, the server's event loop) they hold the cores the
        # Python side needs: without it the decoder ran 1.6x faster on one row and 1.3x on
        # 16 (the GPT-2-small geometry on 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return cls(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]),
                   n_positions)

    @property
    def has_past(self) -> bool:
        """Whether the graph takes past key/values (and so can decode step by step)."""
        return bool(self.past_names)

    @property
    def n_layers(self) -> int:
        return len(self.past_names) // 2

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits of whole contexts (no past): what likelihood and recomputing callers use."""
        feed = self._feed(input_ids, attention_mask, position_ids(attention_mask))
        if self.has_past:
            feed |= self._past_feed(None, len(input_ids))
        return torch.from_numpy(self.session.run(["logits"], feed)[0])

    def step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             position_ids: torch.Tensor, past: Past | None) -> tuple[torch.Tensor, Past]:
        """One decoding step: logits of the new tokens and the grown cache (None: prefill).

        input_ids / position_ids [batch, new]; attention_mask [batch, past + new];
        past: per layer (key, value) [batch, kv_heads, past, head_dim], float32."""
        if not self.has_past:
            raise NotImplementedError("this ONNX graph takes no past key/values: it only "
                                      "recomputes whole contexts (logits)")
        feed = self._feed(input_ids, attention_mask, position_ids)
        feed |= self._past_feed(past, len(input_ids))
        logits, *present = (torch.from_numpy(a) for a in self.session.run(None, feed))
        return logits, tuple(zip(present[0::2], present[1::2], strict=True))

    def _feed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              position_ids: torch.Tensor) -> dict[str, np.ndarray]:
        tensors = (input_ids, attention_mask, position_ids)
        return {name: t.long().contiguous().numpy() for name, t in zip(INPUT_NAMES, tensors,
                                                                        strict=True)}

    def _past_feed(self, past: Past | None, batch: int) -> dict[str, np.ndarray]:
        if past is None:  # a prefill: a zero-length past
            empty = np.zeros((batch, self.cache_shape[0], 0, self.cache_shape[1]), np.float32)
            return dict.fromkeys(self.past_names, empty)
        if len(past) != self.n_layers:
            raise ValueError(f"past: {len(past)} layers, the graph has {self.n_layers}")
        flat = (t for layer in past for t in layer)
        return {name: t.detach().float().contiguous().numpy()
                for name, t in zip(self.past_names, flat, strict=True)}
