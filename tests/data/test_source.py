from pathlib import Path

import pytest

from tasks.config import ConfigError
from tasks.data.source import content_hash, load_demo, read_source, resolve_uri
from tasks.errors import BadInput
from tests.conftest import write_dataset

ROWS = [{"prompt": "hi", "response": "hello"}, {"prompt": "你好", "response": "你好！"}]


def test_demo_has_both_languages_and_no_duplicate_pairs():
    frame = load_demo(["english", "chinese"])
    assert set(frame["language"]) == {"english", "chinese"}
    assert len(frame) > 1000
    assert not frame.duplicated(["prompt", "response"]).any()


@pytest.mark.parametrize(("suffix", "origins"), [
    (".jsonl", ["line 1", "line 2"]), (".csv", ["row 2", "row 3"]),
    (".parquet", ["row 1", "row 2"])])
def test_reads_user_files_and_guesses_language(tmp_path, suffix, origins):
    path = write_dataset(tmp_path / f"d{suffix}", ROWS)
    frame = read_source(str(path), ("english", "chinese"), (str(tmp_path),))
    assert frame.to_dict("records") == [
        {"prompt": "hi", "response": "hello", "language": "english", "origin": origins[0]},
        {"prompt": "你好", "response": "你好！", "language": "chinese", "origin": origins[1]},
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


def test_every_bad_jsonl_line_is_named_at_once_as_bad_input(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = ['{"prompt": "a", "response": "b"}', "", '{"prompt": "c", "response": }',
             '["not", "an", "object"]', '{"prompt": "e", "response": "f"}']
    path.write_bytes("\n".join(lines).encode() + b"\n\xff\xfe\n")
    with pytest.raises(BadInput) as err:
        read_source(str(path), ("english",), (str(tmp_path),))
    message = str(err.value)
    assert message.startswith("dataset_uri: 3 line(s) of the JSONL file are not JSON objects")
    assert "line 3: not JSON (Expecting value at column 29)" in message
    assert "line 4: a JSON list, not an object" in message
    assert "line 6: not UTF-8 (byte 1)" in message
    assert "line 1" not in message.replace("line(s)", "") and "line 5" not in message


def test_a_blank_line_keeps_the_numbering_of_the_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "c", "response": "d"}\n')
    frame = read_source(str(path), ("english",), (str(tmp_path),))
    assert list(frame["origin"]) == ["line 1", "line 3"]
