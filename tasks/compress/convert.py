"""Graph surgery the quantizers need: GPT-2's Conv1D as nn.Linear, INT8 embedding tables
(and a tied head), ONNX weight folding, and the inventory of which layers ended quantized."""

from __future__ import annotations

from typing import Any

import torch

# Layers that hold the weights: a method that leaves one of these in fp32 says so in its report.
WEIGHT_LAYERS = ("Linear", "Conv1D", "Embedding")


def conv1d_to_linear(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every transformers Conv1D (x @ W + b, W stored [in, out]) by the equivalent
    nn.Linear in place: INT8 dynamic/static quantizers only match nn.Linear, and would
    otherwise leave GPT-2's attention and MLP weights, most of the model, in fp32."""
    from transformers.pytorch_utils import Conv1D

    for name, child in module.named_children():
        if isinstance(child, Conv1D):
            n_in, n_out = child.weight.shape
            linear = torch.nn.Linear(n_in, n_out, bias=child.bias is not None)
            with torch.no_grad():
                linear.weight.copy_(child.weight.t())
                if child.bias is not None:
                    linear.bias.copy_(child.bias)
            setattr(module, name, linear)
        else:
            conv1d_to_linear(child)
    return module


class Int8Embedding(torch.nn.Module):
    """An embedding table as INT8 rows with per-row scales (weight-only: lookups dequantize).

    For the token table the tied output head reads the same matrix (Int8TiedHead): in a small
    model the vocabulary matrix is a large share of the bytes, and quantizing the embedding
    and the head separately would store it twice."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127
        self.register_buffer("qweight", torch.round(weight / scale).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.float32))

    def dequantized(self) -> torch.Tensor:
        return self.qweight.to(torch.float32) * self.scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.qweight[input_ids].to(torch.float32) * self.scale[input_ids]


class Int8TiedHead(torch.nn.Module):
    """The output projection reading the same INT8 matrix as the embedding, as an INT8 GEMM
    with activations quantized on the fly (as torch.ao's dynamic Linear does).

    The GEMM needs the matrix in fbgemm's packed layout; it is packed from the embedding's
    INT8 rows when first used and never saved, so the file holds the matrix once. Measured
    at GPT-2-small size: dequantizing the 50,257 x 768 matrix to fp32 in every forward left
    the head as slow as fp32 (the whole model 1.2x faster than fp32), the packed INT8 head
    2.6x at batch 8."""

    def __init__(self, embedding: Int8Embedding) -> None:
        super().__init__()
        self.embedding = embedding
        self._packed: Any = None

    def _pack(self) -> Any:
        rows = self.embedding.qweight.shape[0]
        weight = torch._make_per_channel_quantized_tensor(
            self.embedding.qweight, self.embedding.scale.flatten().double(),
            torch.zeros(rows, dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(weight, None)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            self._packed = self._pack()
        flat = hidden.reshape(-1, hidden.shape[-1]).float().contiguous()
        out = torch.ops.quantized.linear_dynamic(flat, self._packed, reduce_range=True)
        return out.reshape(*hidden.shape[:-1], out.shape[-1])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_packed"] = None  # derived from the embedding: rebuilt after loading
        return state


def quantize_embeddings(model: torch.nn.Module) -> torch.nn.Module:
    """Swap every embedding table for INT8 rows, in place: the token table (and, when the
    head is tied to it, the head as a view of the same INT8 matrix) and learned position
    tables such as GPT-2's. An untied head is an nn.Linear and is quantized with the rest."""
    tokens = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == tokens.weight.data_ptr()
    embedding = Int8Embedding(tokens.weight.detach())
    model.set_input_embeddings(embedding)
    if tied:
        model.set_output_embeddings(Int8TiedHead(embedding))
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.Embedding):
                setattr(parent, name, Int8Embedding(child.weight.detach()))
    return model


def _label(module: torch.nn.Module) -> str | None:
    """A weight-holding layer's kind, with quantized variants named as such; None for
    containers (and torch.ao's packed-params holder, which its Linear already counts)."""
    kind, origin = type(module).__name__, type(module).__module__
    if kind == "LinearPackedParams":
        return None
    if ".quantized.dynamic" in origin:
        return f"DynamicQuantized{kind}"
    if ".quantized" in origin:
        return f"Quantized{kind}"
    if kind in WEIGHT_LAYERS or "Int8" in kind or "WeightOnly" in kind:
        return kind
    return None


def layer_inventory(module: torch.nn.Module) -> dict[str, str]:
    """Every weight-holding layer and its kind: float layers keep their plain names (Linear,
    Conv1D, Embedding), so any fp32 leftover is visible at a glance."""
    return {name: label for name, child in module.named_modules()
            if (label := _label(child)) is not None}


def fold_weight_quantizers(model: Any) -> int:
    """Store ONNX weights as INT8: QuantizeLinear(fp32 initializer) becomes an INT8
    initializer feeding the existing DequantizeLinear. Returns the number folded.

    A fake-quant export keeps every weight in fp32 next to its quantizer; the folded graph
    computes the same values from a quarter of the bytes."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}

    def value(name: str) -> np.ndarray:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        attr = next(a for a in constants[name].attribute if a.name == "value")
        return numpy_helper.to_array(attr.t)

    folded = 0
    for node in [n for n in graph.node if n.op_type == "QuantizeLinear"
                 and n.input[0] in inits]:
        weight = numpy_helper.to_array(inits[node.input[0]])
        scale = value(node.input[1])
        zero = value(node.input[2]) if len(node.input) > 2 else np.zeros((), np.int8)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1:  # per-channel: broadcast along the quantized axis
            shape = [1] * weight.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        info = np.iinfo(zero.dtype)
        q = np.clip(np.rint(weight / scale) + zero.astype(np.int32), info.min, info.max)
        name = f"{node.input[0]}_quantized"
        graph.initializer.append(numpy_helper.from_array(q.astype(zero.dtype), name))
        for consumer in graph.node:
            for i, inp in enumerate(consumer.input):
                if inp == node.output[0]:
                    consumer.input[i] = name
        graph.node.remove(node)
        folded += 1
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return folded
