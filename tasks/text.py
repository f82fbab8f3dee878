"""The dialog format shared by training, evaluation and serving."""

from __future__ import annotations

import re
import unicodedata

USER = "<|user|>"
BOT = "<|bot|>"
EOS = "<|endoftext|>"
SPECIAL_TOKENS = [EOS, USER, BOT]


def clean(text: str) -> str:
    """NFKC folds full-width forms and compatibility characters; whitespace runs collapse."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()


def format_prompt(prompt: str) -> str:
    return f"{USER}{prompt}{BOT}"


def format_example(prompt: str, response: str) -> str:
    return f"{format_prompt(prompt)}{response}{EOS}"
