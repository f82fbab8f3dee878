"""Any transformers causal LM through train -> register -> compress -> evaluate: a GPT-2,
a Llama (untied head, gated MLP, grouped-query attention) and a Qwen2 (its own chat
template), each built locally as a small random checkpoint."""

from __future__ import annotations

import math
import shutil

import mlflow
import pandas as pd
import pytest

from tasks.cli import run_stage
from tasks.config import LifecycleConfig
from tasks.lm.artifact import load_lm
from tasks.registry.model import model_dir_of
from tasks.stage import StageContext
from tests.conftest import TINY, isolated_settings

# One INT8 method per architecture, plus the methods that rebuild the network (pruning,
# distillation) on the Llama; the whole set runs on GPT-2 in tests/compress.
METHODS = {"gpt2": ["inc_woq_rtn"], "qwen2": ["modelopt_int8"],
           "llama": ["torch_int8_dynamic", "prune_structured", "distill"]}
FAST = {"launcher": "single", "model_name": "", "max_steps": 60, "finetune_steps": 10,
        "distill_steps": 20, "distill_n_layer": 1, "distill_n_embd": 32,
        "calibration_batches": 2, "compress_max_quality_loss": 1.0,
        "compress_min_speedup": 0.0, "compress_max_size_ratio": 10.0}
STAGES = ["base_model", "preprocess", "train", "register", "compress", "evaluate"]


@pytest.fixture(scope="module")
def lifecycle(checkpoints, tmp_path_factory):
    """arch -> its results of every stage, each architecture taken through once."""
    from tasks.data.source import load_demo

    done: dict[str, dict] = {}
    root = tmp_path_factory.mktemp("architectures")  # one registry for all of them

    def run(arch: str) -> dict:
        if arch in done:
            return done[arch]
        base = shutil.copytree(checkpoints[arch], root / "models" / arch)
        data = root / f"{arch}.parquet"
        load_demo(["english", "chinese"]).sample(n=400, random_state=0).to_parquet(data)
        cfg = LifecycleConfig.from_dict(TINY | FAST | {"base_model": str(base),
                                                       "compress_methods": METHODS[arch]})
        results = {"validate": {"dataset_uri": str(data)}, "ingest": {"dataset_hash": "cafe"}}
        for stage in STAGES:
            results[stage] = run_stage(StageContext(stage=stage, dag_id="d", run_id=arch,
                                                    config=cfg, inputs=dict(results),
                                                    settings=isolated_settings(root)))
        done[arch] = results
        return results

    return run


@pytest.mark.parametrize("arch", sorted(METHODS))
def test_the_model_is_named_after_its_architecture_and_learns(lifecycle, arch):
    r = lifecycle(arch)
    assert r["base_model"]["model_type"] == arch
    assert r["register"]["model_name"] == f"aigc-{arch}"
    train = r["train"]
    assert train["val_perplexity"] < 0.5 * train["untrained_val_perplexity"]
    tags = mlflow.MlflowClient().get_model_version(f"aigc-{arch}", r["register"]["version"]).tags
    assert tags["aigc.architecture"] == r["base_model"]["architecture"]
    assert tags["aigc.base_model"].endswith(f"models/{arch}")


@pytest.mark.parametrize("arch", sorted(METHODS))
def test_every_candidate_builds_registers_and_generates(lifecycle, arch):
    r = lifecycle(arch)
    candidates = r["compress"]["candidates"]
    assert [c["method"] for c in candidates] == METHODS[arch]
    for cand in candidates:
        assert "error" not in cand, cand
        model = mlflow.pyfunc.load_model(f"models:/aigc-{arch}/{cand['version']}")
        out = model.predict(pd.DataFrame({"prompt": ["hello", "你好"]}),
                            params={"max_new_tokens": 4, "seed": 1})
        assert len(out) == 2 and all(isinstance(t, str) for t in out)
    # Post-training INT8 stays close to the model it quantizes (a 20-step student need not).
    int8 = candidates[0]
    assert abs(int8["verdict"]["quality_loss"]) < 0.05, int8["verdict"]


@pytest.mark.parametrize("arch", sorted(METHODS))
def test_evaluation_scores_the_challenger(lifecycle, arch):
    r = lifecycle(arch)
    ev = r["evaluate"]
    assert ev["challenger_version"] == r["compress"]["version"]
    metrics = ev["challenger"]
    assert all(math.isfinite(v) for v in metrics.values())
    assert 1 < metrics["char_perplexity"] < metrics["perplexity"] * 10


def _inventory(r, method: str) -> dict[str, str]:
    return next(c for c in r["compress"]["candidates"] if c["method"] == method)["report"][
        "layers"]


def test_llama_int8_quantizes_every_projection_the_embedding_and_its_own_head(lifecycle):
    r = lifecycle("llama")
    layers = _inventory(r, "torch_int8_dynamic")
    projections = [n for n in layers if ".layers." in n]
    assert len(projections) == 7 * 2  # q, k, v, o, gate, up, down in each of 2 layers
    assert {layers[n] for n in projections} == {"DynamicQuantizedLinear"}
    assert layers["model.model.embed_tokens"] == "Int8Embedding"
    assert layers["model.lm_head"] == "DynamicQuantizedLinear"  # untied: a Linear of its own
    pruned = next(c for c in r["compress"]["candidates"] if c["method"] == "prune_structured")
    kept, inner = map(int, pruned["report"]["mlp_neurons"].split("/"))
    assert inner == 128 and kept < inner
    lm, _ = load_lm(model_dir_of(f"models:/aigc-llama/{pruned['version']}"))
    mlp = lm.module.model.model.layers[0].mlp
    assert mlp.gate_proj.out_features == mlp.up_proj.out_features == kept
    assert mlp.down_proj.in_features == kept
    student = next(c for c in r["compress"]["candidates"] if c["method"] == "distill")
    assert student["report"]["parameter_ratio"] < 0.8


def test_qwen2_onnx_holds_int8_weights_for_every_projection(lifecycle):
    r = lifecycle("qwen2")
    layers = _inventory(r, "modelopt_int8")
    assert layers["INT8 weights folded"] == 7 * 2
