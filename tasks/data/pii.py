"""PII masking: emails, card numbers, ID numbers and phone numbers become placeholders."""

from __future__ import annotations

import re
from collections import Counter

# Order matters: long digit runs (cards, IDs) are claimed before the looser phone pattern.
PATTERNS: dict[str, str] = {
    "EMAIL": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    "CARD": r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)",
    "ID": r"(?<!\d)(?:\d{17}[\dXx]|\d{3}-\d{2}-\d{4})(?!\d)",
    "PHONE": (r"(?<![\w])(?:\+?\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?"
              r"\d{3,4}[ .-]?\d{3,4}(?:[ .-]?\d{2,4})?(?!\d)"),
}
_COMPILED = {kind: re.compile(pattern) for kind, pattern in PATTERNS.items()}


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _classify_long_number(match: re.Match[str]) -> str | None:
    """A 13-19 digit run is a card only if it passes Luhn; an 18-char run may be a CN ID."""
    digits = re.sub(r"\D", "", match.group())
    if _luhn_ok(digits):
        return "CARD"
    return None


def mask_text(text: str, counts: Counter[str] | None = None) -> str:
    """Replace each PII span with [KIND]; counts (if given) gains one per masked span."""
    counts = counts if counts is not None else Counter()

    def card(match: re.Match[str]) -> str:
        if _classify_long_number(match) is None:
            return match.group()
        counts["CARD"] += 1
        return "[CARD]"

    text = _COMPILED["EMAIL"].sub(lambda m: _count(counts, "EMAIL"), text)
    text = _COMPILED["CARD"].sub(card, text)
    for kind in ("ID", "PHONE"):
        text = _COMPILED[kind].sub(lambda m, k=kind: _count(counts, k), text)
    return text


def _count(counts: Counter[str], kind: str) -> str:
    counts[kind] += 1
    return f"[{kind}]"
