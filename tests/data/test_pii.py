from collections import Counter

import pytest

from tasks.data.pii import mask_text


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("mail me at jane.doe+x@example.co.uk please", "EMAIL"),
        ("card 4111 1111 1111 1111 exp 12/29", "CARD"),
        ("card 4111-1111-1111-1111", "CARD"),
        ("我的身份证号是11010519491231002X", "ID"),
        ("ssn 078-05-1120 on file", "ID"),
        ("call +1 415-555-2671 now", "PHONE"),
        ("手机 13812345678 联系我", "PHONE"),
        ("office (020) 7946 0958", "PHONE"),
    ],
)
def test_masks_each_kind(text, kind):
    counts: Counter[str] = Counter()
    masked = mask_text(text, counts)
    assert f"[{kind}]" in masked
    assert counts[kind] == 1
    assert not any(ch.isdigit() for ch in masked.split(f"[{kind}]")[0][-3:])


@pytest.mark.parametrize("text", ["What is 2 + 2?", "Python 3.11 was released in 2022.",
                                  "It costs 15 dollars", "你好，今天天气怎么样？"])
def test_leaves_ordinary_text_alone(text):
    counts: Counter[str] = Counter()
    assert mask_text(text, counts) == text
    assert not counts


def test_long_number_failing_luhn_is_not_called_a_card():
    counts: Counter[str] = Counter()
    masked = mask_text("order 1234 5678 9012 3456", counts)
    assert "[CARD]" not in masked
