from pathlib import Path

import pytest

from tasks.config import ConfigError
from tasks.data.source import content_hash, load_demo, read_source, resolve_uri
from tests.conftest import write_dataset

ROWS = [{"prompt": "hi", "response": "hello"}, {"prompt": "你好", "response": "你好！"}]


def test_demo_has_both_languages_and_no_duplicate_pairs():
    frame = load_demo(["english", "chinese"])
    assert set(frame["language"]) == {"english", "chinese"}
    assert len(frame) > 1000
    assert not frame.duplicated(["prompt", "response"]).any()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_reads_user_files_and_guesses_language(tmp_path, suffix):
    path = write_dataset(tmp_path / f"d{suffix}", ROWS)
    frame = read_source(str(path), ("english", "chinese"), (str(tmp_path),))
    assert frame.to_dict("records") == [
        {"prompt": "hi", "response": "hello", "language": "english"},
        {"prompt": "你好", "response": "你好！", "language": "chinese"},
    ]
    file_uri = read_source(path.as_uri(), ("english",), (str(tmp_path),))
    assert content_hash(file_uri) == content_hash(frame)


def test_rejects_unknown_scheme(tmp_path):
    with pytest.raises(ConfigError, match="dataset_uri: unsupported scheme 'http'"):
        resolve_uri("http://example.com/d.csv", (str(tmp_path),))


def test_rejects_paths_outside_the_allowed_roots(tmp_path):
    inside = tmp_path / "allowed"
    outside = write_dataset(tmp_path / "secret" / "d.csv", ROWS)
    inside.mkdir()
    with pytest.raises(ConfigError, match="outside the allowed roots"):
        resolve_uri(str(outside), (str(inside),))
    with pytest.raises(ConfigError, match="outside the allowed roots"):
        resolve_uri(str(inside / ".." / "secret" / "d.csv"), (str(inside),))
    (inside / "link.csv").symlink_to(outside)
    with pytest.raises(ConfigError, match="outside the allowed roots"):
        resolve_uri(str(inside / "link.csv"), (str(inside),))


def test_s3_needs_an_allowed_s3_root(tmp_path):
    with pytest.raises(ConfigError, match="not under an allowed s3:// root"):
        resolve_uri("s3://other/d.parquet", (str(tmp_path), "s3://data/aigc"))
    assert resolve_uri("s3://data/aigc/d.parquet", ("s3://data/aigc",)) == "s3://data/aigc/d.parquet"


def test_missing_columns_and_types_are_named(tmp_path):
    path = write_dataset(tmp_path / "d.csv", [{"question": "a", "answer": "b"}])
    with pytest.raises(ConfigError, match=r"lacks column\(s\) \['prompt', 'response'\]"):
        read_source(str(path), ("english",), (str(tmp_path),))
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ConfigError, match="unsupported file type '.txt'"):
        read_source(str(tmp_path / "d.txt"), ("english",), (str(tmp_path),))


def test_content_hash_changes_with_content(tmp_path):
    a = read_source(str(write_dataset(tmp_path / "a.jsonl", ROWS)), ("english",), (str(tmp_path),))
    b = read_source(str(write_dataset(tmp_path / "b.jsonl", ROWS[:1])), ("english",),
                    (str(tmp_path),))
    assert content_hash(a) != content_hash(b)
    assert Path(tmp_path / "a.jsonl").exists()


def test_reads_a_dataset_from_s3_under_an_allowed_prefix(tmp_path, s3):
    path = write_dataset(tmp_path / "d.jsonl", ROWS)
    s3.mkdir("datasets")
    s3.put_file(str(path), "datasets/team/d.jsonl")
    frame = read_source("s3://datasets/team/d.jsonl", ("english", "chinese"),
                        ("s3://datasets/team",))
    assert content_hash(frame) == content_hash(read_source(str(path), ("english", "chinese"),
                                                           (str(tmp_path),)))
