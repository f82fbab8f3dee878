"""Every model artifact the lifecycle produces, behind one interface: logits from token ids.

A model folder holds a tokenizer and one of these formats (named in `model.json`; a plain
transformers folder has none and is `hf`):
- `hf`: transformers save_pretrained (the trained, pruned and distilled models);
- `torch`: a pickled eager module (INC weight-only and torch.ao dynamic/QAT INT8 models);
- `pt2`: a `torch.export` program (INC's PT2E INT8 graphs);
- `onnx`: an ONNX graph with past key/values run by onnxruntime (fp32, or ModelOpt's Q/DQ
  INT8; tasks.lm.onnx).
Decoding and likelihood are written once against `CausalLM` (tasks.lm.generate,
tasks.lm.likelihood), so every format is evaluated, served and benchmarked by the same code,
whatever the architecture (GPT-2, Llama, Qwen2: any transformers causal LM).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

MANIFEST = "model.json"
FORMATS = ("hf", "torch", "pt2", "onnx")
INPUT_NAMES = ("input_ids", "attention_mask", "position_ids")
# A key/value cache: per layer (key, value), each [batch, kv_heads, length, head_dim] (the
# layout of transformers' DynamicCache, and of the ONNX graphs' past and present tensors).
Past = tuple[tuple[torch.Tensor, torch.Tensor], ...]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, so a padded prompt sees the positions it trained on."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class LogitsOf(torch.nn.Module):
    """A causal LM as a pure function (ids, mask, positions) -> logits: no cache, no dict
    outputs, so the same module can be pickled, exported by torch.export and ONNX."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids, use_cache=False).logits


class CausalLM(Protocol):
    n_positions: int

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


@dataclass
class TorchLM:
    """Any module with LogitsOf's signature: eager, quantized or an exported program, on the
    CPU or a GPU (CPU fp32 tensors in and out either way)."""

    module: Any
    n_positions: int
    device: str = "cpu"

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ids, mask = input_ids.to(self.device), attention_mask.to(self.device)
        return self.module(ids, mask, position_ids(mask)).float().cpu()

    @property
    def incremental(self) -> Any:
        """The transformers model under LogitsOf on the CPU (plain or quantized in eager
        mode), which can keep a key/value cache while generating; None for exported graphs
        and other modules, which only recompute."""
        from transformers import PreTrainedModel

        inner = getattr(self.module, "model", None)
        return inner if self.device == "cpu" and isinstance(inner, PreTrainedModel) else None


def context_length(config: Any) -> int:
    """The longest sequence a transformers config's positions cover (GPT-2 names it
    n_positions, most others max_position_embeddings)."""
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"{type(config).__name__}: no context length (n_positions or "
                     "max_position_embeddings)")


def manifest(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {"format": "hf"}


def write_manifest(model_dir: Path, fmt: str, n_positions: int, **extra: Any) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format: {fmt!r} is not one of {FORMATS}")
    (Path(model_dir) / MANIFEST).write_text(
        json.dumps({"format": fmt, "n_positions": n_positions, **extra}, indent=2))


def load_lm(model_dir: str | Path) -> tuple[CausalLM, Any]:
    """The model and tokenizer of a model folder, whatever its format."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    info = manifest(model_dir)
    fmt = info["format"]
    if fmt == "hf":
        from transformers import AutoModelForCausalLM

        # fp32 whatever the checkpoint stores: CPU kernels and every comparison assume it.
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        return TorchLM(LogitsOf(model), context_length(model.config)), tokenizer
    if fmt == "torch":
        # Our own artifact, written by the compress stage: unpickling runs no foreign code.
        module = torch.load(model_dir / "model.pt", weights_only=False).eval()
        return TorchLM(module, info["n_positions"]), tokenizer
    if fmt == "pt2":
        # Registers the quantize/dequantize ops that PT2E graphs call.
        importlib.import_module("torch.ao.quantization.fx._decomposed")

        program = torch.export.load(str(model_dir / "model.pt2"))
        return TorchLM(program.module(), info["n_positions"]), tokenizer
    if fmt == "onnx":
        from tasks.lm.onnx import OnnxLM

        return OnnxLM.load(model_dir / "model.onnx", info["n_positions"]), tokenizer
    raise ValueError(f"{model_dir / MANIFEST}: unknown format {fmt!r} (known: {FORMATS})")
