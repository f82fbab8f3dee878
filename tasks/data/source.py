"""Reading a source dataset: the bundled chatterbot demo or a user's file by URI."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from tasks.config import ConfigError
from tasks.errors import BadInput
from tasks.locations import resolve_location

COLUMNS = ["prompt", "response", "language"]
# Where a row came from, as a person finds it in the source: "line 7" of a JSONL file,
# "row 3" of a CSV file as a spreadsheet numbers it (the header is row 1) or of a Parquet
# file. Validation errors name rows by it; it is not part of the dataset's content hash.
ORIGIN = "origin"
MAX_LISTED = 10  # bad lines named in one error
# Characters outside Latin, general punctuation and CJK (incl. full-width forms) are refused:
# they are the usual sign of a broken encoding or binary garbage in a text column.
DISALLOWED_CHARS = (
    r"[^\t\n\r\x20-\x7e\u00a0-\u024f\u2010-\u206f\u2190-\u21ff\u2500-\u257f\u3000-\u303f\u3400-\u9fff"
    r"\uf900-\ufaff\uff00-\uffef]"
)
DEMO_URI = "demo://chatterbot"
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def _jsonl_line(number: int, raw: bytes) -> tuple[dict | None, str | None]:
    """(row, None) or (None, why line `number` is not a JSON object)."""
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return None, f"line {number}: not UTF-8 (byte {exc.start + 1})"
    except json.JSONDecodeError as exc:
        return None, f"line {number}: not JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(row, dict):
        return None, f"line {number}: a JSON {type(row).__name__}, not an object"
    return row, None


def _read_jsonl(fh) -> pd.DataFrame:
    """One JSON object per line; every bad line is named at once (bad input: no retries)."""
    rows, origins, bad = [], [], []
    for number, raw in enumerate(fh, start=1):
        if not raw.strip():
            continue
        row, problem = _jsonl_line(number, raw)
        if problem:
            bad.append(problem)
            continue
        rows.append(row)
        origins.append(f"line {number}")
    if bad:
        more = f"; and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise BadInput(f"dataset_uri: {len(bad)} line(s) of the JSONL file are not JSON "
                       f"objects: {'; '.join(bad[:MAX_LISTED])}{more}")
    return pd.DataFrame(rows).assign(**{ORIGIN: origins})


def _numbered(frame: pd.DataFrame, first: int) -> pd.DataFrame:
    return frame.assign(**{ORIGIN: [f"row {i}" for i in range(first, first + len(frame))]})


_READERS = {
    ".jsonl": _read_jsonl,
    ".csv": lambda f: _numbered(pd.read_csv(f, dtype=str, keep_default_na=True), 2),
    ".parquet": lambda f: _numbered(pd.read_parquet(f), 1),
}


def guess_language(text: object) -> str | None:
    """Script-based guess; enough to tell the demo's two languages apart."""
    if not isinstance(text, str):
        return None
    return "chinese" if _CJK.search(text) else "english"


def load_demo(languages: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """Prompt/response pairs from the dialog YAML that chatterbot-corpus ships.

    A conversation [a, b, c] yields (a, b) and (b, c). Exact duplicate pairs are dropped:
    the corpus repeats some dialogs across files, and the demo must pass its own validation.
    """
    import chatterbot_corpus
    import yaml

    root = Path(chatterbot_corpus.__file__).parent / "data"
    rows = []
    for language in languages:
        for path in sorted((root / language).glob("*.yml")):
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            for turns in doc.get("conversations", []):
                texts = [str(t).strip() for t in turns if t is not None]
                pairs = zip(texts, texts[1:], strict=False)
                rows += [(a, b, language) for a, b in pairs if a and b]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.drop_duplicates(subset=["prompt", "response"], ignore_index=True)


def resolve_uri(uri: str, allowed_roots: tuple[str, ...]) -> str:
    """A dataset file's location, checked against the allowed roots."""
    return resolve_location(uri, allowed_roots, field="dataset_uri")


def read_source(uri: str, languages: tuple[str, ...],
                allowed_roots: tuple[str, ...]) -> pd.DataFrame:
    """Load the source as prompt/response/language and each row's origin, keeping bad rows
    for validation to judge."""
    if uri == DEMO_URI:
        return _numbered(load_demo(languages), 1)
    target = resolve_uri(uri, allowed_roots)
    suffix = Path(urlparse(target).path).suffix.lower()
    if suffix not in _READERS:
        raise ConfigError(f"dataset_uri: unsupported file type {suffix!r} "
                          f"(use one of {sorted(_READERS)})")
    import fsspec

    with fsspec.open(target, "rb") as fh:
        frame = _READERS[suffix](fh)
    missing = [c for c in ("prompt", "response") if c not in frame.columns]
    if missing:
        raise ConfigError(f"dataset_uri: {uri!r} lacks column(s) {missing}; "
                          f"found {list(frame.columns)}")
    if "language" not in frame.columns:
        frame["language"] = frame["prompt"].map(guess_language)
    # Nulls stay nulls so the validation gate sees and reports them.
    for col in COLUMNS:
        frame[col] = frame[col].astype(object).where(frame[col].notna(), None)
    return frame[[*COLUMNS, ORIGIN]].reset_index(drop=True)


def content_hash(frame: pd.DataFrame) -> str:
    """sha256 of the rows in order, independent of the Parquet writer's version."""
    digest = hashlib.sha256()
    for row in frame[COLUMNS].itertuples(index=False):
        digest.update(json.dumps(list(row), ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()
