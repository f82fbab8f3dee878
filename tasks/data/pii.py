"""PII masking: e-mail addresses, phone numbers (Chinese and US formats, and international
ones written with +), Chinese resident ID and US social security numbers, payment card
numbers and IP addresses become placeholders such as [PHONE].

Boundaries are ASCII letters and digits only, never `\\w`: in Chinese text a number follows a
character directly (请打电话给我13812345678), and `\\w` counts CJK characters as word
characters. Numbers that only look like an ID or a card (a checksum fails) are left alone,
so an order number is not masked as a card. docs/BENCHMARKS.md has the recall per type on a
generated set and the false positives on the demo corpus (bench/pii_recall.py)."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable

_NOT_ALNUM_BEFORE, _NOT_ALNUM_AFTER = r"(?<![A-Za-z0-9])", r"(?![A-Za-z0-9])"
_NOT_DIGIT_BEFORE, _NOT_DIGIT_AFTER = r"(?<![0-9])", r"(?![0-9])"


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def _resident_id_ok(text: str) -> bool:
    """GB 11643: the 18th character is the ISO 7064 MOD 11-2 check of the first 17."""
    if "-" in text:  # a US social security number: no check digit
        return True
    total = sum(int(d) * w for d, w in zip(text[:17], _ID_WEIGHTS, strict=True))
    return "10X98765432"[total % 11] == text[17].upper()


def _card_ok(text: str) -> bool:
    return _luhn_ok(re.sub(r"\D", "", text))


def _ipv6_ok(text: str) -> bool:
    """An IPv6 address that could be someone's: not "::" (a slice in code) nor "::1"."""
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return not (address.is_unspecified or address.is_loopback)


# (kind, pattern, check of a match or None). Order matters: e-mails first (their digits are
# not phones), then IP addresses, IDs and cards (long digit runs) before the looser phones.
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_CN = r"(?:(?:\+|00)86[ -]?|(?<![0-9]))"  # +86 / 0086, or no digit just before
RULES: tuple[tuple[str, str, Callable[[str], bool] | None], ...] = (
    ("EMAIL", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", None),
    ("IP", rf"(?<![0-9.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?[0-9])", None),
    ("IP", r"(?<![0-9A-Za-z:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Za-z:])",
     _ipv6_ok),
    ("ID", rf"{_NOT_ALNUM_BEFORE}(?:\d{{17}}[\dXx]|\d{{3}}-\d{{2}}-\d{{4}}){_NOT_ALNUM_AFTER}",
     _resident_id_ok),
    # 13-19 digits, the first not 0 (no card network's is), not after "+" (a phone number
    # with its country code).
    ("CARD", rf"(?<![+0-9])[1-9](?:[ -]?\d){{12,18}}{_NOT_DIGIT_AFTER}", _card_ok),
    # Chinese mobile: 11 digits from 13-19, grouped 3-4-4 or not.
    ("PHONE", rf"{_CN}1[3-9]\d(?:[ -]?\d{{4}}){{2}}{_NOT_DIGIT_AFTER}", None),
    # Landline with a trunk 0 (China, and most of Europe): area code 0xx(x), in brackets or
    # not, then 7-8 digits, grouped 3-4 or 4-4 or not.
    ("PHONE", rf"{_CN}(?:\(0\d{{2,3}}\)|0\d{{2,3}})[ -]?\d{{3,4}}[ -]?\d{{4}}{_NOT_DIGIT_AFTER}",
     None),
    # US (NANP): optional +1, area code in brackets or not, 3-3-4 with . - or space.
    ("PHONE", rf"(?:\+?1[ .-]?|(?<![0-9]))(?:\([2-9]\d{{2}}\)|[2-9]\d{{2}})[ .-]?\d{{3}}"
              rf"[ .-]?\d{{4}}{_NOT_DIGIT_AFTER}", None),
    # Anything else written internationally: + country code and 6-12 more digits.
    ("PHONE", rf"\+[1-9]\d{{0,2}}(?:[ .-]?\d{{2,4}}){{2,4}}{_NOT_DIGIT_AFTER}", None),
)
KINDS = tuple(dict.fromkeys(kind for kind, _, _ in RULES))
_COMPILED = tuple((kind, re.compile(pattern), check) for kind, pattern, check in RULES)


def mask_text(text: str, counts: Counter[str] | None = None) -> str:
    """Replace each PII span with [KIND]; counts (if given) gains one per masked span."""
    counts = counts if counts is not None else Counter()
    for kind, pattern, check in _COMPILED:
        def replace(match: re.Match[str], kind: str = kind,
                    check: Callable[[str], bool] | None = check) -> str:
            if check is not None and not check(match.group()):
                return match.group()
            counts[kind] += 1
            return f"[{kind}]"
        text = pattern.sub(replace, text)
    return text


def pii_kinds(text: str) -> list[str]:
    """The kinds of PII left in a text (empty when masking would change nothing)."""
    counts: Counter[str] = Counter()
    mask_text(text, counts)
    return sorted(counts)
