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
        # Right after a Chinese character: CJK characters are not a number's boundary.
        ("请打电话给我13812345678", "PHONE"),
        ("电话：+86 138 1234 5678。", "PHONE"),
        ("座机010-87654321转", "PHONE"),
        ("call (415) 555-2671", "PHONE"),
        ("邮箱jane@example.com谢谢", "EMAIL"),
        ("身份证110101199003074573。", "ID"),
        ("卡号6222020200112233446，谢谢", "CARD"),
        ("server at 192.168.10.20.", "IP"),
        ("v6 address 2001:db8::8a2e:370:7334 down", "IP"),
    ],
)
def test_masks_each_kind(text, kind):
    counts: Counter[str] = Counter()
    masked = mask_text(text, counts)
    assert f"[{kind}]" in masked
    assert counts[kind] == 1
    assert not any(ch.isdigit() for ch in masked.split(f"[{kind}]")[0][-3:])


@pytest.mark.parametrize("text", ["What is 2 + 2?", "Python 3.11 was released in 2022.",
                                  "It costs 15 dollars", "你好，今天天气怎么样？",
                                  "We met at 12:30:45 on 2023-10-12.",
                                  "ID 110101199003074578 fails its check digit",
                                  "population 1,402,112,000 in 2021"])
def test_leaves_ordinary_text_alone(text):
    counts: Counter[str] = Counter()
    assert mask_text(text, counts) == text
    assert not counts


def test_long_number_failing_luhn_is_not_called_a_card():
    counts: Counter[str] = Counter()
    masked = mask_text("order 1234 5678 9012 3456", counts)
    assert "[CARD]" not in masked



def test_a_masked_text_has_nothing_left_to_mask():
    counts: Counter[str] = Counter()
    once = mask_text("a@b.io 13812345678 4111111111111111 10.0.0.1 110101199003074573", counts)
    assert sum(counts.values()) == 5
    again: Counter[str] = Counter()
    assert mask_text(once, again) == once and not again
