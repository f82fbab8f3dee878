"""A loaded text model: an artifact of any format, its tokenizer and its stop tokens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tasks.lm.artifact import CausalLM, load_lm
from tasks.lm.generate import Decoder, Generated, Sampling, generate_rows
from tasks.lm.likelihood import Likelihood, likelihood
from tasks.lm.template import prepare_tokenizer, prompt_text, stop_ids


@dataclass
class TextModel:
    """Generation and likelihood of one model folder, prompted with its chat template."""

    lm: CausalLM
    tokenizer: Any
    stop: tuple[int, ...]

    def generate_rows(self, prompts: Sequence[str], sampling: Sequence[Sampling],
                      generators: Sequence[torch.Generator]) -> list[Generated]:
        return generate_rows(self.lm, self.tokenizer, prompts, sampling, generators, self.stop)

    def prompt_ids(self, prompt: str | Sequence[Mapping[str, str]], raw: bool = False,
                   ) -> list[int]:
        """Token ids of a user prompt or a conversation, rendered with the chat template as
        the model was trained; `raw` takes a text prompt as it is (a plain completion)."""
        if raw:
            text = str(prompt)
        elif isinstance(prompt, str):
            text = prompt_text(self.tokenizer, prompt)
        else:
            text = self.tokenizer.apply_chat_template([dict(m) for m in prompt], tokenize=False,
                                                      add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decoder(self, hold_finished: bool = False) -> Decoder:
        """A running batch of this model (continuous batching drives one per version)."""
        return Decoder(self.lm, self.tokenizer, self.stop, hold_finished)

    def generate(self, prompts: Sequence[str], max_new_tokens: int, seed: int,
                 temperature: float = 0.8, top_p: float = 0.95, batch_size: int = 16,
                 ) -> list[str]:
        """Seeded sampling of many prompts in batches with one setting; the new text."""
        generator = torch.Generator().manual_seed(seed)
        sampling = [Sampling(max_new_tokens, temperature, top_p)] * batch_size
        outputs: list[str] = []
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i: i + batch_size]
            outputs += [g.text for g in self.generate_rows(chunk, sampling[: len(chunk)],
                                                           [generator] * len(chunk))]
        return outputs

    def likelihood(self, pairs: Sequence[tuple[str, str]], batch_size: int = 16,
                   window: int | None = None) -> Likelihood:
        return likelihood(self.lm, self.tokenizer, pairs, batch_size, window)


def load(model_dir: str | Path) -> TextModel:
    """The model folder at model_dir, whatever its format. Every folder the lifecycle
    writes carries its chat template; a bare checkpoint gets the plain one, as training
    would have given it."""
    lm, tokenizer = load_lm(model_dir)
    prepare_tokenizer(tokenizer)
    return TextModel(lm, tokenizer, stop_ids(tokenizer))
