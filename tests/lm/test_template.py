"""The chat template: one rendering of a pair for training, scoring and generation."""

from __future__ import annotations

import pandas as pd
import pytest
from transformers import AutoTokenizer

from tasks.errors import BadInput
from tasks.lm.template import (
    IGNORE,
    PLAIN_TEMPLATE,
    encode_pairs,
    prepare_tokenizer,
    render_prompts,
    split_pair,
    stop_ids,
)
from tasks.train.data import token_blocks


def _tokenizer(checkpoints, arch: str):
    tok = AutoTokenizer.from_pretrained(checkpoints[arch])
    return tok, prepare_tokenizer(tok)


def test_a_base_tokenizer_without_a_template_gets_the_plain_one(checkpoints):
    llama, kind = _tokenizer(checkpoints, "llama")
    assert kind == "plain" and llama.chat_template == PLAIN_TEMPLATE
    assert llama.pad_token == llama.eos_token == "</s>"
    # Llama's BOS differs from its EOS, so the rendering starts with it; GPT-2's does not.
    assert split_pair(llama, "hi", "hello") == ("<s>User: hi\nAssistant:", " hello</s>")
    gpt2, _ = _tokenizer(checkpoints, "gpt2")
    assert split_pair(gpt2, "hi", "hello") == ("User: hi\nAssistant:",
                                               " hello<|endoftext|>")
    assert stop_ids(llama) == (llama.eos_token_id,)


def test_an_own_chat_template_is_kept_and_its_end_of_turn_stops_generation(checkpoints):
    qwen, kind = _tokenizer(checkpoints, "qwen2")
    assert kind == "own"
    head, tail = split_pair(qwen, "你好", "你好！")
    assert head == "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    assert tail == "你好！<|im_end|>\n"
    assert qwen.convert_tokens_to_ids("<|im_end|>") in stop_ids(qwen)
    assert render_prompts(qwen, ["你好"]) == [head]


def test_a_template_that_rewrites_the_prompt_is_refused(checkpoints):
    tok = AutoTokenizer.from_pretrained(checkpoints["gpt2"])
    # The prompt alone ends differently from the same prompt inside a conversation.
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %} =>{% endif %}")
    with pytest.raises(BadInput, match="chat template does not render"):
        prepare_tokenizer(tok)


def test_blocks_carry_loss_on_the_responses_only_unless_asked(checkpoints):
    tok, _ = _tokenizer(checkpoints, "qwen2")
    frame = pd.DataFrame({"prompt": ["how are you?", "你好"] * 20,
                          "response": ["fine, thanks", "你好！"] * 20})
    pairs = encode_pairs(tok, [("how are you?", "fine, thanks"), ("你好", "你好！")])
    per_pair = [(len(p), len(r)) for p, r in pairs]
    blocks = token_blocks(frame, tok, 16)
    flat_ids, flat_labels = blocks.ids.flatten(), blocks.labels.flatten()
    labelled = flat_labels != IGNORE
    assert (flat_labels[labelled] == flat_ids[labelled]).all()
    period = sum(p + r for p, r in per_pair)
    expected = sum(r for _, r in per_pair) / period
    assert labelled.float().mean().item() == pytest.approx(expected, abs=0.05)
    everything = token_blocks(frame, tok, 16, loss_on_prompt=True)
    assert (everything.labels == everything.ids).all()
