"""LoRA: adapters on a frozen base, on every launcher, resumable bit for bit; the adapter is
logged and the merged model registered."""

from __future__ import annotations

import shutil

import mlflow
import pytest
import torch

from tasks.cli import run_stage
from tasks.config import LifecycleConfig
from tasks.stage import StageContext
from tests.conftest import TINY, isolated_settings

LORA = {"finetune_method": "lora", "lora_r": 4, "learning_rate": 1e-2, "max_steps": 40,
        "model_name": "", "eval_every": 1000}


@pytest.fixture(scope="module")
def bases(checkpoints, tmp_path_factory):
    """root, and per architecture the base_model and preprocess results."""
    from tasks.data.source import load_demo

    root = tmp_path_factory.mktemp("lora")
    data = root / "masked.parquet"
    load_demo(["english", "chinese"]).sample(n=400, random_state=0).to_parquet(data)
    prepared = {}
    for arch in ("gpt2", "llama"):
        base = shutil.copytree(checkpoints[arch], root / "models" / arch)
        inputs = {"validate": {"dataset_uri": str(data)}}
        for stage in ("base_model", "preprocess"):
            inputs[stage] = run_stage(_ctx(root, arch, stage, inputs, base_model=str(base)))
        prepared[arch] = inputs
    return root, prepared


def _ctx(root, run_id: str, stage: str, inputs: dict, **conf) -> StageContext:
    cfg = LifecycleConfig.from_dict(TINY | LORA | conf)
    return StageContext(stage=stage, dag_id="d", run_id=run_id, config=cfg,
                        inputs=dict(inputs), settings=isolated_settings(root))


def _train(bases, arch: str, run_id: str, **conf) -> dict:
    root, prepared = bases
    inputs = prepared[arch]
    conf = {"base_model": inputs["base_model"]["source"]} | conf
    return run_stage(_ctx(root, run_id, "train", inputs, **conf))


def test_adapters_train_alone_and_the_merged_model_is_what_registers(bases):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = _train(bases, "llama", "single", launcher="single")
    assert result["finetune_method"] == "lora"
    assert result["trainable_parameters"] < 0.25 * result["parameters"]
    assert result["val_perplexity"] < result["untrained_val_perplexity"]
    # The registered folder is a plain transformers model: the adapter merged into the base.
    merged = AutoModelForCausalLM.from_pretrained(result["model_uri"]).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    base_dir = bases[1]["llama"]["base_model"]["model_dir"]
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir),
                                        result["adapter_uri"]).eval()
    ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits,
                                   atol=1e-4, rtol=1e-4)
    # The adapter is an artifact of the train stage's MLflow run.
    run = mlflow.search_runs(search_all_experiments=True, output_format="list",
                             filter_string="tags.`aigc.stage` = 'train' and "
                                           "tags.`aigc.dag_run_id` = 'single'")[0]
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "adapter")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= files


def test_launchers_agree_with_lora_on_gpt2_conv1d(bases):
    """DDP and Horovod shards of the same global batch follow the single process (GPT-2's
    Conv1D layers take transposed adapters). The base keeps GPT-2's own dropout, whose
    masks differ per rank, so they agree to within a percent rather than to rounding."""
    results = {name: _train(bases, "gpt2", f"gpt2-{name}", launcher=name, lora_dropout=0.0)
               for name in ("single", "ddp", "horovod")}
    base = results["single"]["val_loss"]
    for name in ("ddp", "horovod"):
        assert results[name]["workers"] == 2
        assert results[name]["val_loss"] == pytest.approx(base, rel=1e-2)
    assert results["single"]["val_loss"] < results["single"]["untrained_val_perplexity"]


def test_a_retried_lora_run_resumes_bit_for_bit(bases):
    conf = {"launcher": "single", "checkpoint_every": 10, "lora_dropout": 0.1}
    full = _train(bases, "llama", "resume-ref", **conf)
    first = _train(bases, "llama", "resume", **conf)
    stage_dir = bases[0] / "d" / "resume" / "train"
    # A crash after step 30: the last checkpoint and the model are gone.
    shutil.rmtree(stage_dir / "checkpoints" / "step-00000040")
    shutil.rmtree(stage_dir / "model")
    assert sorted(p.name for p in (stage_dir / "checkpoints").iterdir()) == ["step-00000030"]
    # Only the adapters and the optimizer are checkpointed: the frozen base is rebuilt.
    state = torch.load(stage_dir / "checkpoints" / "step-00000030" / "weights.pt",
                       weights_only=False)
    assert state["model"] and all("lora_" in k for k in state["model"])
    resumed = _train(bases, "llama", "resume", **conf)
    assert resumed["resumed_from_step"] == 30
    assert resumed["checksum"] == full["checksum"] == first["checksum"]
