"""Compression: quantization (INC, torch.ao, ModelOpt), pruning and distillation, behind a gate."""
