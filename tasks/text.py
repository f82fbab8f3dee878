"""Text helpers shared by data preparation, evaluation, serving and feedback."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence


def clean(text: str) -> str:
    """NFKC folds full-width forms and compatibility characters; whitespace runs collapse."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()


def _units(text: str) -> list[str]:
    """Words for space-separated scripts, characters for CJK (which has no spaces)."""
    units: list[str] = []
    for word in text.split():
        if any("\u3400" <= ch <= "\u9fff" for ch in word):
            units.extend(word)
        else:
            units.append(word.lower())
    return units


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams over all n-grams across the generations (0 when there are none)."""
    grams = [tuple(u[i: i + n]) for t in texts for u in [_units(t)] for i in range(len(u) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def cut(text: str, limit: int) -> str:
    """A text as an error or a report quotes it: at most `limit` characters, saying how long
    it was (a 5,000-character prompt or a megabyte of URI is not printed whole)."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"
