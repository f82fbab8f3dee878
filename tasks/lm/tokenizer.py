"""Byte-level BPE tokenizers trained here: the from-scratch demo's, and the ones of the small
checkpoints that tasks.scaffold builds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def train_bpe(texts: Sequence[str], vocab_size: int, *, special: Sequence[str], bos: str,
              eos: str, chat_template: str | None = None) -> Any:
    """A transformers tokenizer of byte-level BPE (no unknown tokens for any script) trained
    on texts; `special` lists every special token, bos and eos among them. Padding uses EOS
    (always masked)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=2,
                            special_tokens=list(special), show_progress=False)
    extra = [t for t in special if t not in (bos, eos)]
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=bos, eos_token=eos,
                                  pad_token=eos, unk_token=eos, additional_special_tokens=extra)
    if chat_template:
        tok.chat_template = chat_template
    return tok
