import json

import pytest

from tasks.config import ConfigError, LifecycleConfig, params_schema


def test_defaults_are_valid_and_round_trip():
    cfg = LifecycleConfig()
    assert LifecycleConfig.from_dict(cfg.to_dict()) == cfg
    assert LifecycleConfig.load(json.dumps({"max_steps": 5})).max_steps == 5


@pytest.mark.parametrize(
    ("conf", "field"),
    [
        ({"max_steps": 0}, "max_steps"),
        ({"max_steps": "ten"}, "max_steps"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"languages": ["klingon"]}, "languages"),
        ({"languages": []}, "languages"),
        ({"model_name": "bad name!"}, "model_name"),
        ({"n_embd": 30, "n_head": 4}, "n_embd"),
        ({"min_chars": 100, "max_chars": 50}, "min_chars"),
        ({"max_stepz": 3}, "max_stepz"),
        ({"base_model": "ftp://host/model"}, "base_model"),
        ({"finetune_method": "lora"}, "finetune_method"),
        ({"finetune_method": "qlora", "base_model": "/m"}, "finetune_method"),
        ({"lora_target_modules": ["q_proj", "q proj"], "base_model": "/m"},
         "lora_target_modules"),
        ({"lora_target_modules": ["q_proj", "q_proj"]}, "lora_target_modules"),
        ({"lora_r": 0}, "lora_r"),
        ({"loss_on_prompt": "yes"}, "loss_on_prompt"),
        ({"launcher": "deepspeed"}, "launcher"),
        # FSDP runs on one node (in the training pod); more nodes are Horovod's MPIJob.
        ({"launcher": "fsdp", "nodes": 2, "compute_target": "kubernetes"}, "nodes"),
    ],
)
def test_bad_values_name_the_field(conf, field):
    with pytest.raises(ConfigError, match=rf"^{field}:"):
        LifecycleConfig.from_dict(conf)


def test_params_schema_covers_every_field_with_help_and_type():
    schema = params_schema()
    assert set(schema) == set(LifecycleConfig().to_dict())
    for name, spec in schema.items():
        assert spec["description"], name
        assert spec["type"] in {"integer", "number", "string", "array", "boolean"}, name
    assert schema["max_steps"]["minimum"] == 1
    assert schema["languages"]["items"]["enum"] == ["english", "chinese"]


def test_base_model_forms_and_the_derived_model_name_are_accepted():
    for source in ("", "/models/llama", "./models/llama", "file:///models/x", "s3://b/m",
                   "models:/aigc-llama@champion", "models:/aigc-llama/3", "hf://org/name",
                   "Qwen/Qwen2-0.5B"):
        assert LifecycleConfig(base_model=source).base_model == source
    cfg = LifecycleConfig(base_model="/m", finetune_method="lora", launcher="fsdp",
                          compute_target="kubernetes")
    assert cfg.model_name == "" and cfg.world_size == 2
