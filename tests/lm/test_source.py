"""What a usable base checkpoint holds, and fetching one from S3 or a model hub."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tasks.errors import BadInput
from tasks.lm.source import fetch_hub, fetch_s3, inspect_checkpoint


def _copy(src: Path, dst: Path, skip: str = "") -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(skip) if skip else None)
    return dst


def test_a_checkpoint_is_read_from_its_files(checkpoints):
    info = inspect_checkpoint(checkpoints["llama"], "x")
    assert info.model_type == "llama" and info.architecture == "LlamaForCausalLM"
    assert info.context == 256
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoints["llama"])
    assert info.parameters == sum(p.numel() for p in model.parameters())


def test_missing_weights_config_or_tokenizer_are_named(checkpoints, tmp_path):
    no_weights = _copy(checkpoints["gpt2"], tmp_path / "a", "*.safetensors")
    with pytest.raises(BadInput, match=r"base_model: 'src' has no \*\.safetensors weights"):
        inspect_checkpoint(no_weights, "src")
    no_config = _copy(checkpoints["gpt2"], tmp_path / "b", "config.json")
    with pytest.raises(BadInput, match="has no config.json"):
        inspect_checkpoint(no_config, "src")
    no_tokenizer = _copy(checkpoints["gpt2"], tmp_path / "c", "tokenizer*")
    with pytest.raises(BadInput, match="has no tokenizer"):
        inspect_checkpoint(no_tokenizer, "src")


def test_a_model_that_is_not_a_causal_lm_is_refused(checkpoints, tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    folder = tmp_path / "bert"
    BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32)
                    ).save_pretrained(folder)
    shutil.copy(checkpoints["gpt2"] / "tokenizer.json", folder)
    with pytest.raises(BadInput, match="is a BertForMaskedLM, not a causal language model"):
        inspect_checkpoint(folder, "bert")


def test_fetch_s3_copies_a_prefix_once(checkpoints, s3, tmp_path):
    from tests.conftest import upload

    uri = upload(s3, checkpoints["qwen2"], "s3://models/team/qwen2-tiny")
    target = fetch_s3(uri, tmp_path / "copy")
    assert sorted(p.name for p in target.iterdir()) == sorted(
        p.name for p in checkpoints["qwen2"].iterdir())
    assert inspect_checkpoint(target, uri).model_type == "qwen2"
    s3.rm(uri, recursive=True)  # a second fetch finds the complete copy: no request made
    assert fetch_s3(uri, tmp_path / "copy") == target
    with pytest.raises(BadInput, match="holds no objects"):
        fetch_s3("s3://models/nothing-here", tmp_path / "none")


def test_an_unreachable_hub_fails_at_once_naming_why(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BadInput, match="HF_HUB_OFFLINE is set"):
        fetch_hub("org/model", tmp_path / "hub")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    # Here the hub cannot be reached; where it can, the repository does not exist: either
    # way the reason is named and nothing is left behind.
    with pytest.raises(BadInput, match="cannot download 'aigc-lifecycle-tests/no-such-model'"):
        fetch_hub("aigc-lifecycle-tests/no-such-model", tmp_path / "hub")
    assert not (tmp_path / "hub").exists()
