import json

import pytest

from tasks.config import ConfigError, LifecycleConfig, field_schema, params_schema


def test_defaults_are_valid_and_round_trip():
    cfg = LifecycleConfig()
    assert LifecycleConfig.from_dict(cfg.to_dict()) == cfg
    assert LifecycleConfig.load(json.dumps({"max_steps": 60})).max_steps == 60


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
        # One process cannot span nodes; horovod, ddp and fsdp can (an MPIJob, a TrainJob).
        ({"launcher": "single", "nodes": 2, "compute_target": "kubernetes"}, "nodes"),
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
        kind = spec["type"]
        if isinstance(kind, list):  # optional: the form would refuse it left empty
            assert kind[1] == "null" and LifecycleConfig.from_dict({name: None}), name
            kind = kind[0]
        assert kind in {"integer", "number", "string", "array", "boolean"}, name
    # Bounds reach the server's validation but not the form's number input, which would
    # clamp an out-of-range entry silently; they are written out in the description.
    assert "minimum" not in schema["max_steps"]
    assert schema["max_steps"]["allOf"] == [{"minimum": 1, "maximum": 1_000_000}]
    assert schema["max_steps"]["description"].endswith("(at least 1, at most 1,000,000)")
    assert schema["languages"]["items"]["enum"] == ["english", "chinese"]
    assert schema["languages"]["examples"] == ["english", "chinese"]  # a multi-select
    assert schema["max_steps"]["section"] == "Training"
    assert schema["base_model"]["type"] == ["string", "null"]  # empty: the demo model
    assert LifecycleConfig.from_dict({"base_model": None, "compress_methods": None}) == \
        LifecycleConfig(base_model="", compress_methods=())
    assert schema["max_steps"]["type"] == "integer"  # required: a number must be given
    assert [schema[k]["section"] for k in ("dataset_uri", "base_model", "compress_methods",
                                          "max_perplexity", "canary_steps")] == [
        "Data", "Model", "Compression", "Evaluation", "Canary"]


def test_the_form_schema_refuses_what_the_config_refuses():
    import jsonschema

    schema = params_schema()
    for name, value in [("max_steps", -1), ("val_fraction", 0.9), ("learning_rate", 0),
                        ("compress_methods", ["zip"])]:
        spec = {k: v for k, v in schema[name].items()
                if k not in ("default", "description", "section")}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(value, spec)
        jsonschema.validate(schema[name]["default"], spec)


def test_cross_field_rules_name_the_field():
    with pytest.raises(ConfigError, match="^warmup_steps: 50 is not below max_steps=40"):
        LifecycleConfig(max_steps=40)


def test_base_model_forms_and_the_derived_model_name_are_accepted():
    for source in ("", "/models/llama", "./models/llama", "file:///models/x", "s3://b/m",
                   "models:/aigc-llama@champion", "models:/aigc-llama/3", "hf://org/name",
                   "Qwen/Qwen2-0.5B"):
        assert LifecycleConfig(base_model=source).base_model == source
    cfg = LifecycleConfig(base_model="/m", finetune_method="lora", launcher="fsdp",
                          compute_target="kubernetes")
    assert cfg.model_name == "" and cfg.world_size == 2


def test_list_fields_hold_what_they_declare_however_the_config_is_made():
    import dataclasses
    import typing

    hints = typing.get_type_hints(LifecycleConfig)
    arrays = [f.name for f in dataclasses.fields(LifecycleConfig)
              if field_schema(f)["type"] == "array"]
    assert set(arrays) == {"languages", "lora_target_modules", "compress_methods",
                           "canary_steps"}
    made = [LifecycleConfig(), LifecycleConfig(canary_steps=[5, 100], languages=["english"]),
            LifecycleConfig.from_dict({"compress_methods": ["distill"]})]
    for cfg in made:
        for name in arrays:
            assert typing.get_origin(hints[name]) is tuple
            assert isinstance(getattr(cfg, name), tuple), (name, getattr(cfg, name))
        hash(cfg)
    assert made[1].to_dict()["canary_steps"] == [5, 100]


def test_every_free_text_field_is_bounded_and_a_long_value_is_not_echoed():
    import dataclasses

    from tasks.config import FeedbackConfig

    for cls in (LifecycleConfig, FeedbackConfig):
        for f in dataclasses.fields(cls):
            schema = field_schema(f)
            if schema["type"] == "string" and "enum" not in schema:
                assert "maxLength" in schema, f.name
            if schema["type"] == "array" and "enum" not in schema["items"]:
                assert "maxItems" in schema, f.name
    huge = "x" * 1_000_000
    with pytest.raises(ConfigError) as err:
        LifecycleConfig(dataset_uri=huge)
    assert str(err.value) == "dataset_uri: 1,000,000 characters, over the limit of 2,048"
    with pytest.raises(ConfigError) as err:
        LifecycleConfig(max_steps=huge)
    assert len(str(err.value)) < 200
    with pytest.raises(ConfigError, match="an item of 5,000 characters"):
        LifecycleConfig(lora_target_modules=["q" * 5000])
    assert params_schema(LifecycleConfig)["dataset_uri"]["maxLength"] == 2048
