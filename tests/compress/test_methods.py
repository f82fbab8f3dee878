"""Every compression method builds a loadable artifact that generates, and quantizes the
layers it claims to (GPT-2's Conv1D included)."""

from __future__ import annotations

import math
from pathlib import Path

import onnx
import pandas as pd
import pytest
import torch

from tasks.compress.convert import conv1d_to_linear, layer_inventory
from tasks.compress.measure import size_bytes
from tasks.compress.methods import METHODS, Workbench
from tasks.config import COMPRESSION_METHODS, LifecycleConfig
from tasks.errors import BadInput
from tasks.lm.artifact import load_lm, manifest
from tasks.lm.model import load
from tests.compress.conftest import COMPRESS

BLOCK_LAYERS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


@pytest.fixture(scope="module")
def bench(trained) -> Workbench:
    _, prep, train = trained
    return Workbench(LifecycleConfig.from_dict(COMPRESS), Path(train["model_uri"]),
                     pd.read_parquet(prep["splits"]["train"]))


@pytest.fixture(scope="module")
def built(bench, tmp_path_factory):
    """method -> (folder, report), each built once."""
    cache: dict[str, tuple[Path, dict]] = {}

    def build(method: str):
        if method not in cache:
            out = tmp_path_factory.mktemp(method)
            cache[method] = (out, METHODS[method](bench, out))
        return cache[method]

    return build


def test_config_and_implementations_name_the_same_methods():
    assert tuple(METHODS) == COMPRESSION_METHODS


def test_conv1d_to_linear_keeps_the_function(bench):
    model = bench.model()
    ids = bench.train_blocks.ids[:2]
    before = model(input_ids=ids).logits
    converted = conv1d_to_linear(model)
    assert not any(kind == "Conv1D" for kind in layer_inventory(converted).values())
    torch.testing.assert_close(converted(input_ids=ids).logits, before, atol=1e-5, rtol=1e-5)


CPU_METHODS = [m for m in COMPRESSION_METHODS if m != "tensorrt_int8"]


@pytest.mark.parametrize("method", CPU_METHODS)
def test_artifact_loads_back_and_generates(built, bench, held_out, method):
    folder, _ = built(method)
    model = load(folder)
    texts = model.generate(["hello", "你好"], max_new_tokens=5, seed=0)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    lik = model.likelihood(held_out[:20])
    assert math.isfinite(lik.char_perplexity)
    assert manifest(folder)["format"] in ("hf", "torch", "pt2", "onnx")


@pytest.mark.parametrize("method", ["torch_int8_dynamic", "qat_int8"])
def test_dynamic_int8_quantizes_every_linear_and_both_embeddings(built, bench, method):
    folder, report = built(method)
    layers = report["layers"]
    blocks = [name for name in layers if any(name.endswith(b) for b in BLOCK_LAYERS)]
    assert len(blocks) == 4 * bench.cfg.n_layer
    assert {layers[name] for name in blocks} == {"DynamicQuantizedLinear"}
    assert layers["model.transformer.wte"] == layers["model.transformer.wpe"] == "Int8Embedding"
    assert layers["model.lm_head"] == "Int8TiedHead"
    assert not [n for n, k in layers.items() if k in ("Linear", "Conv1D", "Embedding")]
    # (pickled module metadata weighs more in a model this tiny than in the demo model)
    assert size_bytes(folder) < 0.5 * size_bytes(bench.baseline_dir)


@pytest.mark.parametrize("method", ["inc_woq_rtn", "inc_woq_gptq"])
def test_weight_only_packs_every_block_layer(built, bench, method):
    _, report = built(method)
    layers = report["layers"]
    for i in range(bench.cfg.n_layer):
        for b in BLOCK_LAYERS:
            assert layers[f"model.transformer.h.{i}.{b}"] == "INCWeightOnlyLinear"
    assert "Conv1D" not in layers.values()


@pytest.mark.parametrize("method", ["inc_int8_dynamic", "inc_int8_static"])
def test_pt2e_quantizes_every_linear_op(built, bench, method):
    _, report = built(method)
    layers = report["layers"]
    # Four per block plus the output head; all read INT8-dequantized inputs.
    assert layers["linear ops"] == 4 * bench.cfg.n_layer + 1
    assert layers["linear ops on INT8"] == layers["linear ops"]


def test_modelopt_onnx_has_qdq_and_int8_weights(built, bench):
    folder, report = built("modelopt_int8")
    assert report["layers"]["INT8 weights folded"] == 4 * bench.cfg.n_layer
    assert report["layers"]["DequantizeLinear"] > report["layers"]["INT8 weights folded"]
    graph = onnx.load(str(folder / "model.onnx"))
    int8 = [i for i in graph.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(int8) == 4 * bench.cfg.n_layer


@pytest.mark.parametrize("method", ["onnx_fp32", "modelopt_int8"])
def test_onnx_graphs_take_past_key_values_and_were_checked_on_a_cached_step(built, method):
    folder, report = built(method)
    lm, _ = load_lm(folder)
    assert lm.has_past and lm.n_layers == COMPRESS["n_layer"]
    assert {"onnxruntime_max_abs_error", "onnxruntime_max_abs_error_cached_step"} <= set(report)


def _other_shapes(bench: Workbench):
    """(ids, mask, kept positions, case) at batch sizes, lengths and left padding other than
    the ones an exported graph was traced at."""
    g = torch.Generator().manual_seed(0)
    for batch, length, pad in [(3, 10, 4), (1, 5, 0), (5, bench.cfg.block_size, 9)]:
        ids = torch.randint(3, 300, (batch, length), generator=g)
        mask = torch.ones_like(ids)
        mask[0, :pad] = 0
        yield ids, mask, mask.bool(), (batch, length, pad)


def test_onnx_fp32_is_the_baseline_on_other_shapes_and_padding(built, bench):
    """Only the runtime changes: the same logits, whole contexts and cached steps alike."""
    folder, report = built("onnx_fp32")
    assert max(report["onnxruntime_max_abs_error"],
               report["onnxruntime_max_abs_error_cached_step"]) < 1e-4
    baseline, _ = load_lm(bench.baseline_dir)
    onnx_lm, _ = load_lm(folder)
    for ids, mask, keep, _ in _other_shapes(bench):
        torch.testing.assert_close(onnx_lm.logits(ids, mask)[keep],
                                   baseline.logits(ids, mask)[keep], atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def long_context(trained, tmp_path_factory) -> Workbench:
    """A base checkpoint whose context (256 positions) is longer than the run's blocks."""
    from tasks.scaffold import scaffold

    _, prep, _ = trained
    base = scaffold("gpt2", tmp_path_factory.mktemp("base"), size="tiny")
    return Workbench(LifecycleConfig.from_dict(COMPRESS), base,
                     pd.read_parquet(prep["splits"]["train"]))


@pytest.mark.parametrize(("method", "limit"), [("onnx_fp32", 1e-4), ("torch_int8_dynamic", 0.1),
                                               ("inc_int8_dynamic", 0.1)])
def test_an_artifact_serves_its_base_models_whole_context(long_context, method, limit,
                                                           tmp_path):
    """Not only the training blocks' length: an artifact that declared that much would cut
    longer prompts and recompute a window for every token past it."""
    METHODS[method](long_context, tmp_path)
    baseline, _ = load_lm(long_context.baseline_dir)
    artifact, _ = load_lm(tmp_path)
    assert artifact.n_positions == baseline.n_positions == 256
    length = 6 * long_context.cfg.block_size
    assert length < 256
    ids = torch.randint(3, 500, (2, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    want, got = baseline.logits(ids, mask), artifact.logits(ids, mask)
    assert (got - want).abs().max() <= limit * want.abs().max()


def test_structured_pruning_removes_mlp_neurons_to_the_target(built, bench):
    folder, report = built("prune_structured")
    assert report["linear_sparsity"] == pytest.approx(bench.cfg.prune_sparsity, abs=0.01)
    lm, _ = load_lm(folder)
    inner = lm.module.model.config.n_inner
    assert inner < 4 * bench.cfg.n_embd
    assert lm.module.model.transformer.h[0].mlp.c_fc.weight.shape[1] == inner


def test_distilled_student_is_smaller_and_uses_the_teacher_tokenizer(built, bench):
    folder, report = built("distill")
    assert report["parameter_ratio"] < 0.5 and report["teacher"] == "challenger"
    lm, tokenizer = load_lm(folder)
    assert len(tokenizer) == len(bench.tokenizer)
    # One head of 16: the teacher's head size (16) kept.
    assert lm.module.model.config.n_layer == 1 and lm.module.model.config.n_embd == 16
    assert lm.module.model.config.n_head == 1


def test_a_student_width_that_splits_no_head_is_refused_not_bent():
    from transformers import GPT2Config, LlamaConfig

    from tasks.compress.methods import student_config

    gpt2 = GPT2Config(n_embd=128, n_head=4, n_layer=4)  # heads of 32
    assert student_config(gpt2, 2, 96).num_attention_heads == 3
    with pytest.raises(BadInput, match=r"distill_n_embd: 100 is not a multiple of the "
                                       r"teacher's head size 32 .* use 96 or 128"):
        student_config(gpt2, 2, 100)
    llama = LlamaConfig(hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=512, num_hidden_layers=2)
    student = student_config(llama, 1, 128)
    assert (student.num_attention_heads, student.num_key_value_heads) == (2, 2)
    with pytest.raises(BadInput, match="distill_n_embd: 96"):
        student_config(llama, 1, 96)
    # Known before the run when the teacher is trained from the config.
    with pytest.raises(BadInput, match="distill_n_embd: 100"):
        LifecycleConfig(n_embd=128, n_head=4, distill_n_embd=100,
                        compress_methods=["distill"])
    LifecycleConfig(n_embd=128, n_head=4, distill_n_embd=100, compress_methods=["distill"],
                    base_model="gpt2")  # the base model's geometry is checked at the stage


def test_tensorrt_is_refused_where_it_cannot_run_with_the_reason(bench, tmp_path):
    # TensorRT is not a project dependency (GPU images add it), so this worker lacks it.
    with pytest.raises(BadInput, match=r"compress_methods: tensorrt_int8 needs .*tensorrt"):
        METHODS["tensorrt_int8"](bench, tmp_path)
    assert not any(tmp_path.iterdir())


QUANTIZERS = ["torch_int8_dynamic", "inc_int8_dynamic", "inc_int8_static", "inc_woq_rtn",
              "inc_woq_gptq", "qat_int8", "modelopt_int8"]


@pytest.mark.parametrize("method", QUANTIZERS)
def test_quantized_logits_track_the_baseline_on_other_shapes_and_padding(built, bench,
                                                                        method):
    """Exported graphs (ONNX, torch.export) were traced at one shape: they must still be the
    same function at other batch sizes, lengths and left padding."""
    folder, _ = built(method)
    baseline, _ = load_lm(bench.baseline_dir)
    quantized, _ = load_lm(folder)
    for ids, mask, keep, case in _other_shapes(bench):
        want, got = baseline.logits(ids, mask)[keep], quantized.logits(ids, mask)[keep]
        assert got.shape == want.shape
        # QAT fine-tunes, so it drifts further from the baseline than post-training methods.
        limit = 0.25 if method == "qat_int8" else 0.1
        assert (got - want).abs().max() <= limit * want.abs().max(), case
