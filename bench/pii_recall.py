"""PII masking measured: recall per entity type on generated examples written into English
and Chinese sentences (right after a Chinese character included), and what masking changes
in the demo corpus, where nothing personal is expected (false positives). Writes
bench/results/pii_recall.json and its section of docs/BENCHMARKS.md.

A generated value counts as masked when it no longer appears in the text and the expected
placeholder does.

    .venv/bin/python bench/pii_recall.py [--per-type 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import sys
from collections import Counter
from collections.abc import Callable

from tasks.data.pii import _ID_WEIGHTS, _luhn_ok, mask_text
from tasks.data.source import load_demo
from tasks.settings import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
from report import update_section  # noqa: E402

TEMPLATES = ("My contact is {v}.", "reach me at {v} tonight", "({v})", "{v}",
             "我的信息是{v}，谢谢", "请联系{v}。", "号码{v}号", "电话：{v}")


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _grouped(rng: random.Random, parts: list[str], seps: str) -> str:
    sep = rng.choice(seps)
    return sep.join(parts)


def email(rng: random.Random) -> str:
    local = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(
        rng.randint(3, 12)))
    local += rng.choice(["", ".li", "+news", "_wei", "2024"])
    domains = ["example.com", "mail.example.cn", "163.com", "qq.com", "corp.example.co.uk"]
    return f"{local}@{rng.choice(domains)}"


def cn_mobile(rng: random.Random) -> str:
    number = f"1{rng.choice('3456789')}{_digits(rng, 9)}"
    body = rng.choice([number, _grouped(rng, [number[:3], number[3:7], number[7:]], " -")])
    return rng.choice(["", "+86 ", "+86", "0086 "]) + body


def cn_landline(rng: random.Random) -> str:
    area = rng.choice(["010", "021", "020", "0755", "0571", "028"])
    local = _digits(rng, 8 if len(area) == 3 else rng.choice([7, 8]))
    return rng.choice([f"{area}-{local}", f"({area}){local}", f"({area}) {local}",
                       f"{area} {local[:-4]} {local[-4:]}"])


def us_phone(rng: random.Random) -> str:
    area, exchange, line = (f"{rng.randint(2, 9)}{_digits(rng, 2)}",
                            f"{rng.randint(2, 9)}{_digits(rng, 2)}", _digits(rng, 4))
    return rng.choice([f"({area}) {exchange}-{line}", f"{area}-{exchange}-{line}",
                       f"{area}.{exchange}.{line}", f"+1 {area} {exchange} {line}",
                       f"+1-{area}-{exchange}-{line}"])


def cn_resident_id(rng: random.Random) -> str:
    body = (rng.choice(["110101", "310104", "440305", "510107"])
            + f"{rng.randint(1950, 2010)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
            + _digits(rng, 3))
    return body + "10X98765432"[sum(int(d) * w for d, w in zip(body, _ID_WEIGHTS,
                                                               strict=True)) % 11]


def us_ssn(rng: random.Random) -> str:
    return f"{rng.randint(1, 665):03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def card(rng: random.Random) -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("34", 15), ("37", 15),
                                 ("62", 16), ("62", 19)])
    body = prefix + _digits(rng, length - len(prefix) - 1)
    number = next(body + d for d in "0123456789" if _luhn_ok(body + d))
    if length == 16 and rng.random() < 0.5:
        return rng.choice(" -").join(number[i:i + 4] for i in range(0, 16, 4))
    return number


def ipv4(rng: random.Random) -> str:
    return str(ipaddress.IPv4Address(rng.getrandbits(32)))


def ipv6(rng: random.Random) -> str:
    address = ipaddress.IPv6Address(rng.getrandbits(128) if rng.random() < 0.5
                                    else (0x20010DB8 << 96) | rng.getrandbits(32))
    return address.compressed if rng.random() < 0.7 else address.exploded


TYPES: dict[str, tuple[str, Callable[[random.Random], str]]] = {
    "e-mail": ("EMAIL", email),
    "phone, Chinese mobile": ("PHONE", cn_mobile),
    "phone, Chinese landline": ("PHONE", cn_landline),
    "phone, US": ("PHONE", us_phone),
    "Chinese resident ID": ("ID", cn_resident_id),
    "US social security number": ("ID", us_ssn),
    "payment card (Luhn)": ("CARD", card),
    "IP address v4": ("IP", ipv4),
    "IP address v6": ("IP", ipv6),
}


def recall(per_type: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for name, (kind, make) in TYPES.items():
        hit, missed = 0, []
        for i in range(per_type):
            value = make(rng)
            masked = mask_text(TEMPLATES[i % len(TEMPLATES)].format(v=value))
            if value not in masked and f"[{kind}]" in masked:
                hit += 1
            elif len(missed) < 3:
                missed.append(value)
        rows.append({"type": name, "placeholder": kind, "examples": per_type,
                     "recall": hit / per_type, "missed": missed})
    return rows


def false_positives() -> dict:
    frame = load_demo(["english", "chinese"])
    texts = [*frame["prompt"], *frame["response"]]
    changed, kinds = [], Counter()
    for text in texts:
        counts: Counter[str] = Counter()
        masked = mask_text(text, counts)
        if counts:
            kinds.update(counts)
            # The masked span in its line, as one line
            line = next(ln for ln in masked.splitlines()
                        if any(f"[{kind}]" in ln for kind in counts))
            changed.append({"masked": line.strip()[:120]})
    return {"texts": len(texts), "changed": len(changed), "kinds": dict(kinds),
            "examples": changed[:10]}


def render(rows: list[dict], fp: dict, per_type: int, seed: int) -> str:
    lines = [f"`.venv/bin/python bench/pii_recall.py --per-type {per_type} --seed {seed}`", "",
             "| entity | placeholder | examples | recall | missed, e.g. |",
             "| --- | --- | ---: | ---: | --- |"]
    for r in rows:
        missed = ", ".join(f"`{m}`" for m in r["missed"]) or "-"
        lines.append(f"| {r['type']} | [{r['placeholder']}] | {r['examples']:,} | "
                     f"{r['recall']:.1%} | {missed} |")
    lines += ["", f"Each value written into {len(TEMPLATES)} sentence forms in turn, English and "
              "Chinese (right after a Chinese character included).", "",
              f"False positives: the demo corpus (no personal data in it) has {fp['texts']:,} "
              f"texts; masking changed {fp['changed']} of them ({fp['kinds'] or 'nothing'}):"]
    lines += [f"- `{e['masked']}`" for e in fp["examples"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-type", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows, fp = recall(args.per_type, args.seed), false_positives()
    results = PROJECT_ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "pii_recall.json").write_text(json.dumps(
        {"per_type": args.per_type, "seed": args.seed, "rows": rows, "false_positives": fp},
        indent=2, ensure_ascii=False))
    body = render(rows, fp, args.per_type, args.seed)
    print(body)
    update_section("pii-recall", f"## PII masking (`bench/pii_recall.py`)\n\n{body}")


if __name__ == "__main__":
    main()
