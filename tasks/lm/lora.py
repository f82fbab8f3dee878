"""LoRA with the peft library: which layers get adapters, checked before any training, and
the merge that turns an adapted model back into a plain transformers model."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from tasks.errors import ConfigError


def _is_projection(module: torch.nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, torch.nn.Linear | Conv1D)


def block_linears(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """(name, module) of the linear projections inside the repeated transformer blocks (a
    numbered block in the name), never the output head."""
    head = model.get_output_embeddings()
    for name, module in model.named_modules():
        inside_block = any(p.isdigit() for p in name.split(".")[:-1])
        if inside_block and module is not head and _is_projection(module):
            yield name, module


def block_projections(model: torch.nn.Module) -> list[str]:
    """Names (last component) of the block projections: c_attn/c_proj/c_fc for GPT-2,
    q/k/v/o and gate/up/down projections for Llama and Qwen2. The embeddings and the output
    head are never adapted."""
    return list(dict.fromkeys(name.rsplit(".", 1)[-1] for name, _ in block_linears(model)))


def resolve_targets(model: torch.nn.Module, requested: Sequence[str]) -> list[str]:
    """The configured target modules, or the block projections by default. A requested name
    that matches no linear layer of the model is an error naming what the model has."""
    available = block_projections(model)
    if not requested:
        if not available:
            raise ConfigError(f"lora_target_modules: {type(model).__name__} has no linear "
                              "projections in numbered blocks; name the modules to adapt")
        return available
    projections = {name for name, module in model.named_modules() if _is_projection(module)}
    for target in requested:
        if not any(n == target or n.endswith(f".{target}") for n in projections):
            raise ConfigError(f"lora_target_modules: {target!r} matches no linear layer of "
                              f"{type(model).__name__} (its block projections: "
                              f"{', '.join(available) or 'none'})")
    return list(requested)


def apply_lora(model: torch.nn.Module, cfg: Any) -> torch.nn.Module:
    """The model with LoRA adapters on its targets and every other weight frozen."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    targets = resolve_targets(model, cfg.lora_target_modules)
    # GPT-2's Conv1D stores its weight [in, out]: peft must transpose for it.
    conv = any(isinstance(m, Conv1D) for m in model.modules())
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                        lora_dropout=cfg.lora_dropout, target_modules=targets,
                        fan_in_fan_out=conv, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def is_lora(model: torch.nn.Module) -> bool:
    # By attribute, not isinstance: importing peft costs seconds a full fine-tune never needs.
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """A plain transformers model with the adapters folded into its weights (what
    compression and serving load); a model without adapters is returned as it is."""
    return model.merge_and_unload() if is_lora(model) else model


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
