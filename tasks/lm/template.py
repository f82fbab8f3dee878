"""How a prompt/response pair becomes tokens: the tokenizer's chat template, rendered the
same way for training, evaluation, serving and the canary.

The template lives in the tokenizer that is saved with every model folder, so a model is
always prompted the way it was trained:
- a base model's own chat template when it has one (Llama and Qwen2 instruct models do);
- otherwise PLAIN_TEMPLATE: `User: <prompt>\\nAssistant: <response><eos>`, text that any
  tokenizer encodes (with the BOS token first where it differs from EOS, as Llama expects);
- the from-scratch demo's own tokenizer carries DEMO_TEMPLATE:
  `<|user|><prompt><|bot|><response><|endoftext|>`, with those markers as special tokens.

A pair is rendered twice, as the prompt alone (with the generation prompt) and as the whole
exchange; the response is what the second adds to the first. Prompt and response are then
tokenized separately, exactly as generation sees them (prompt ids, then generated ids), and
the loss can be restricted to the response tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tasks.errors import BadInput

USER = "<|user|>"
BOT = "<|bot|>"
EOS = "<|endoftext|>"
SPECIAL_TOKENS = [EOS, USER, BOT]

DEMO_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}" + USER + "{{ message['content'] }}" + BOT
    + "{%- elif message['role'] == 'assistant' -%}{{ message['content'] }}" + EOS
    + "{%- endif -%}{%- endfor -%}"
)
# Newlines are written as expressions: a `{%-` tag would strip a literal one before it.
PLAIN_TEMPLATE = (
    "{%- if bos_token and bos_token != eos_token -%}{{ bos_token }}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] }}{{ '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}User: {{ message['content'] }}{{ '\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}Assistant: {{ message['content'] }}"
    "{{ eos_token }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}Assistant:{%- endif -%}"
)
IGNORE = -100  # the label of a token that carries no loss


def prepare_tokenizer(tokenizer: Any) -> str:
    """Give a base model's tokenizer what the lifecycle needs, in place: a chat template
    (PLAIN_TEMPLATE where it has none) and a pad token (its EOS where it has none; padding
    is always masked). Returns which template it uses: "own" or "plain". Raises BadInput
    when the template cannot separate a response from its prompt."""
    if tokenizer.eos_token is None:
        raise BadInput("base_model: the tokenizer has no EOS token, so generation could "
                       "never stop")
    kind = "own"
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = PLAIN_TEMPLATE
        kind = "plain"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    split_pair(tokenizer, "hello", "hi there")  # fail now, not in the middle of training
    return kind


def _render(tokenizer: Any, messages: list[dict[str, str]], prompt_only: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=prompt_only)


def prompt_text(tokenizer: Any, prompt: str) -> str:
    """The prompt as the model sees it before it answers."""
    return _render(tokenizer, [{"role": "user", "content": prompt}], prompt_only=True)


def split_pair(tokenizer: Any, prompt: str, response: str) -> tuple[str, str]:
    """(prompt text, response text): the rendered exchange cut where the answer starts."""
    head = prompt_text(tokenizer, prompt)
    full = _render(tokenizer, [{"role": "user", "content": prompt},
                               {"role": "assistant", "content": response}], prompt_only=False)
    if not full.startswith(head) or response not in full[len(head):]:
        raise BadInput("base_model: the tokenizer's chat template does not render a "
                       "conversation as its prompt followed by the answer; give the tokenizer "
                       "a simpler chat_template (or remove it to use the plain one)")
    return head, full[len(head):]


def _ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    # The template writes BOS and the turn markers itself: no tokenizer-added specials.
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []


def encode_pairs(tokenizer: Any, pairs: Iterable[tuple[str, str]],
                 ) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) of each pair."""
    split = [split_pair(tokenizer, p, r) for p, r in pairs]
    heads = _ids(tokenizer, [h for h, _ in split])
    tails = _ids(tokenizer, [t for _, t in split])
    return list(zip(heads, tails, strict=True))


def render_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[str]:
    """Prompts rendered for generation (tokenized by the caller, which pads them)."""
    return [prompt_text(tokenizer, p) for p in prompts]


def stop_ids(tokenizer: Any) -> tuple[int, ...]:
    """Tokens that end an answer: EOS, and the template's end-of-turn marker when it is one
    token of its own (Qwen2's `<|im_end|>`, Llama 3's `<|eot_id|>`)."""
    _, tail = split_pair(tokenizer, "x", "y")
    marker = tail[tail.index("y") + 1:].strip()
    ids = {tokenizer.eos_token_id}
    if marker:
        marker_ids = _ids(tokenizer, [marker])[0]
        if len(marker_ids) == 1:
            ids.add(marker_ids[0])
    return tuple(sorted(ids))
