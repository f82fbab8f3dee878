"""Reading a source dataset: the bundled chatterbot demo or a user's file by URI."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from tasks.config import ConfigError
from tasks.locations import resolve_location

COLUMNS = ["prompt", "response", "language"]
# Characters outside Latin, general punctuation and CJK (incl. full-width forms) are refused:
# they are the usual sign of a broken encoding or binary garbage in a text column.
DISALLOWED_CHARS = (
    r"[^\t\n\r\x20-\x7e\u00a0-\u024f\u2010-\u206f\u2190-\u21ff\u2500-\u257f\u3000-\u303f\u3400-\u9fff"
    r"\uf900-\ufaff\uff00-\uffef]"
)
DEMO_URI = "demo://chatterbot"
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_READERS = {
    ".jsonl": lambda f: pd.read_json(f, lines=True, dtype=False),
    ".csv": lambda f: pd.read_csv(f, dtype=str, keep_default_na=True),
    ".parquet": pd.read_parquet,
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
    """Load the source as prompt/response/language, keeping bad rows for validation to judge."""
    if uri == DEMO_URI:
        return load_demo(languages)
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
    return frame[COLUMNS].reset_index(drop=True)


def content_hash(frame: pd.DataFrame) -> str:
    """sha256 of the rows in order, independent of the Parquet writer's version."""
    digest = hashlib.sha256()
    for row in frame[COLUMNS].itertuples(index=False):
        digest.update(json.dumps(list(row), ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()
