"""Small base checkpoints of real architectures, built here with random weights and a BPE
tokenizer trained on the demo dialogs: to try `base_model` without a checkpoint of your own,
and for the tests and benchmarks (nothing is downloaded).

    python -m tasks.scaffold --arch llama --out var/data/llama-tiny
    python -m tasks.scaffold --arch gpt2 --size gpt2-small --out var/data/gpt2-124m

Each architecture's tokenizer is set up as its real counterparts are: GPT-2 with one
`<|endoftext|>` token and no chat template, Llama with distinct `<s>`/`</s>` and no chat
template (base models have none), Qwen2 with ChatML (`<|im_start|>`, `<|im_end|>`) as its
chat template — so the plain template, BOS handling and an own template are all exercised.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.stage import atomic_path

log = logging.getLogger(__name__)
ARCHITECTURES = ("gpt2", "llama", "qwen2")
CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class Geometry:
    layers: int
    width: int
    heads: int
    inner: int  # GPT-2's MLP width
    gated_inner: int  # the gated MLP's (Llama, Qwen2): 2/3 as wide for the same weights
    context: int
    vocab: int  # the embedding rows (at least the tokenizer's); 0: the architecture's own


# The vocabulary sizes of the released models (GPT-2; Llama 2; Qwen2).
OWN_VOCAB = {"gpt2": 50257, "llama": 32000, "qwen2": 151936}


GEOMETRIES = {
    "tiny": Geometry(layers=2, width=64, heads=4, inner=128, gated_inner=128, context=256,
                     vocab=512),
    # GPT-2 small: 124 M parameters with its own vocabulary; a Llama of this geometry (gated
    # MLP of 2,048, untied head, Llama 2's 32,000 tokens) has 127 M.
    "gpt2-small": Geometry(layers=12, width=768, heads=12, inner=3072, gated_inner=2048,
                           context=1024, vocab=0),
}


def _tokenizer(arch: str, vocab: int) -> Any:
    from tasks.data.source import load_demo
    from tasks.lm.tokenizer import train_bpe

    demo = load_demo(["english", "chinese"])
    texts = [*demo["prompt"], *demo["response"]]
    if arch == "gpt2":
        return train_bpe(texts, vocab, special=["<|endoftext|>"], bos="<|endoftext|>",
                         eos="<|endoftext|>")
    if arch == "llama":
        return train_bpe(texts, vocab, special=["<s>", "</s>"], bos="<s>", eos="</s>")
    return train_bpe(texts, vocab, special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                     bos="<|endoftext|>", eos="<|im_end|>", chat_template=CHATML)


def _config(arch: str, g: Geometry, tokenizer: Any) -> Any:
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    vocab = max(g.vocab or OWN_VOCAB[arch], len(tokenizer))
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_positions=g.context, n_embd=g.width,
                          n_layer=g.layers, n_head=g.heads, n_inner=g.inner,
                          tie_word_embeddings=True, **ids)
    # Grouped-query attention (half as many key/value heads), as both families use.
    common = {"vocab_size": vocab, "hidden_size": g.width, "intermediate_size": g.gated_inner,
              "num_hidden_layers": g.layers, "num_attention_heads": g.heads,
              "num_key_value_heads": max(1, g.heads // 2),
              "max_position_embeddings": g.context, **ids}
    if arch == "llama":
        return LlamaConfig(tie_word_embeddings=False, **common)
    return Qwen2Config(tie_word_embeddings=True, **common)


def scaffold(arch: str, out: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a checkpoint folder (config, safetensors, tokenizer) of `arch` at `size`."""
    import torch
    from transformers import AutoModelForCausalLM

    if arch not in ARCHITECTURES:
        raise ValueError(f"arch: {arch!r} is not one of {ARCHITECTURES}")
    geometry = GEOMETRIES[size]
    tokenizer = _tokenizer(arch, min(geometry.vocab or OWN_VOCAB[arch], 4096))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(arch, geometry, tokenizer))
    with atomic_path(out) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    log.info("%s %s: %.1f M parameters -> %s", arch, size,
             sum(p.numel() for p in model.parameters()) / 1e6, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.scaffold", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=ARCHITECTURES, required=True)
    parser.add_argument("--size", choices=sorted(GEOMETRIES), default="tiny")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    scaffold(args.arch, args.out, args.size, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
