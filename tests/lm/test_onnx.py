"""ONNX graphs with past key/values: the same logits and cache as the transformers model with
a DynamicCache, step after step, for every supported architecture."""

from __future__ import annotations

import pytest
import torch

from tasks.lm.artifact import INPUT_NAMES, LogitsOf, position_ids
from tasks.lm.onnx import CacheStep, OnnxLM, export_onnx

VOCAB = 64
ARCHS = ("gpt2", "llama", "qwen2")


def tiny(arch: str) -> torch.nn.Module:
    """Two layers of each architecture; Llama and Qwen2 with grouped-query attention (two
    query heads per key/value head), as their released models have."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(0)
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32,
                                          n_layer=2, n_head=4)).eval()
    gated = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "max_position_embeddings": 64}
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**gated)).eval()
    return Qwen2ForCausalLM(Qwen2Config(**gated)).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[torch.nn.Module, OnnxLM]]:
    """arch -> (transformers model, its ONNX graph in onnxruntime), each exported once."""
    found = {}
    for arch in ARCHS:
        model = tiny(arch)
        path = tmp_path_factory.mktemp(arch) / "model.onnx"
        ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))
        export_onnx(CacheStep(model), ids, torch.ones_like(ids), path)
        found[arch] = (model, OnnxLM.load(path, 64))
    return found


def left_padded(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = torch.randint(1, VOCAB, (n,), generator=g)
        mask[row, width - n:] = 1
    return ids, mask


def left_pad(t: torch.Tensor, dim: int, length: int) -> torch.Tensor:
    shape = list(t.shape)
    shape[dim] = length - t.shape[dim]
    return torch.cat([t.new_zeros(shape), t], dim=dim)


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_steps_match_transformers_with_a_dynamic_cache(exported, arch):
    """A left-padded prefill of three prompts, then five one-token steps: the same logits
    as the transformers model fed the same tokens with its own cache, and the same cache
    layout (so a cache can move between the two)."""
    from transformers import DynamicCache

    model, lm = exported[arch]
    assert lm.has_past and lm.n_layers == 2
    ids, mask = left_padded([5, 2, 7])
    cache, past = DynamicCache(), None
    with torch.no_grad():
        for step in range(6):
            positions = position_ids(mask)[:, -ids.shape[1]:]
            want = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                         cache=cache, use_cache=True)
            got, past = lm.step(ids, mask, positions, past)
            keep = mask[:, -ids.shape[1]:].bool()  # padded positions' logits mean nothing
            torch.testing.assert_close(got[keep], want.logits[keep], atol=1e-4, rtol=1e-4,
                                       msg=lambda m, s=step: f"step {s}: {m}")
            assert [(k.shape, v.shape) for k, v in past] == [
                (layer.keys.shape, layer.values.shape) for layer in cache.layers]
            ids = want.logits[:, -1:].argmax(-1)
            mask = torch.cat([mask, torch.ones_like(ids)], dim=1)


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_of_a_whole_context_are_the_uncached_models(exported, arch):
    model, lm = exported[arch]
    ids, mask = left_padded([9, 4], seed=3)
    with torch.no_grad():
        want = LogitsOf(model)(ids, mask, position_ids(mask))
    keep = mask.bool()
    torch.testing.assert_close(lm.logits(ids, mask)[keep], want[keep], atol=1e-4, rtol=1e-4)


def test_rows_prefilled_apart_step_together_once_left_padded_into_one_cache(exported):
    """Rows join a running batch between steps: each row's cache, left-padded to the longest
    (zeros the mask hides) and stacked along the batch, steps as each row alone would."""
    _, lm = exported["llama"]
    rows = [left_padded([n], seed=n) for n in (3, 6)]
    alone, caches = [], []
    for ids, mask in rows:
        logits, past = lm.step(ids, mask, position_ids(mask), None)
        nxt = logits[:, -1:].argmax(-1)
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        alone.append(lm.step(nxt, mask, position_ids(mask)[:, -1:], past)[0])
        caches.append((nxt, mask, past))
    width = max(m.shape[1] for _, m, _ in caches)  # past + the new token
    ids = torch.cat([n for n, _, _ in caches])
    mask = torch.cat([left_pad(m, 1, width) for _, m, _ in caches])
    past = tuple(tuple(torch.cat([left_pad(p[layer][side], 2, width - 1) for _, _, p in caches])
                       for side in (0, 1)) for layer in range(lm.n_layers))
    together, present = lm.step(ids, mask, mask.sum(-1, keepdim=True) - 1, past)
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-5, rtol=1e-5)
    assert present[0][0].shape[2] == width


def test_a_graph_without_past_inputs_only_recomputes(tmp_path):
    model = tiny("gpt2")
    ids = torch.randint(0, VOCAB, (2, 6))
    mask = torch.ones_like(ids)
    axes = {name: {0: "batch", 1: "length"} for name in (*INPUT_NAMES, "logits")}
    torch.onnx.export(LogitsOf(model).eval(), (ids, mask, position_ids(mask)),
                      str(tmp_path / "model.onnx"), input_names=list(INPUT_NAMES),
                      output_names=["logits"], dynamic_axes=axes, opset_version=17,
                      dynamo=False)
    lm = OnnxLM.load(tmp_path / "model.onnx", 64)
    assert not lm.has_past and lm.n_layers == 0
    with torch.no_grad():
        want = model(input_ids=ids).logits
    torch.testing.assert_close(lm.logits(ids, mask), want, atol=1e-4, rtol=1e-4)
    with pytest.raises(NotImplementedError, match="no past key/values"):
        lm.step(ids, mask, position_ids(mask), None)


@pytest.mark.parametrize("arch", ARCHS)
def test_continuous_batching_decodes_an_onnx_graph_as_the_transformers_model(exported, arch):
    """The serving decoder on the ONNX graph: rows joining a running batch, one leaving
    early, a row passing the context; token for token what the transformers model gives."""
    from types import SimpleNamespace

    from tasks.lm.artifact import TorchLM
    from tasks.lm.generate import Decoder, Sampling

    model, lm = exported[arch]
    tokenizer = SimpleNamespace(pad_token_id=0, decode=lambda ids, **_: "x" * len(ids))
    prompts = [[3, 4, 5, 6], [7, 8], [9, 10, 11, 12, 13, 14]]
    sampling = [Sampling(70, 0.0), Sampling(3, 0.0), Sampling(20, 0.9)]

    def decode(causal) -> list[list[int]]:
        decoder = Decoder(causal, tokenizer, stop_ids=())
        assert decoder.step_fn is not None  # both keep a cache
        rows = [decoder.new_row(p, s, torch.Generator().manual_seed(i))
                for i, (p, s) in enumerate(zip(prompts, sampling, strict=True))]
        decoder.join(rows[:1])
        decoder.step()
        decoder.join(rows[1:])
        while len(decoder):
            decoder.step()
        return [r.generated for r in rows]

    expected = decode(TorchLM(LogitsOf(model), 64))
    assert decode(lm) == expected
    assert [len(g) for g in expected] == [70, 3, 20]
