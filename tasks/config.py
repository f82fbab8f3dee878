"""One typed run configuration: the DAG's Params, REST conf validation and the CLI share it."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.errors import ConfigError
from tasks.rollout.policy import steps_problem
from tasks.text import cut

# Compression methods by name (tasks.compress.methods.METHODS implements each).
COMPRESSION_METHODS = ("torch_int8_dynamic", "inc_int8_dynamic", "inc_int8_static",
                       "inc_woq_rtn", "inc_woq_gptq", "qat_int8", "onnx_fp32", "modelopt_int8",
                       "tensorrt_int8", "prune_structured", "distill")
def student_heads(width: int, heads: int, n_embd: int) -> int:
    """Attention heads of a distilled student of width n_embd: the teacher's head size kept
    (rotary embeddings and attention kernels are tuned to it), so the width must be a
    multiple of it; anything else is refused rather than bent into fewer, wider heads."""
    head_dim = width // heads
    if n_embd % head_dim:
        low = max(head_dim, n_embd - n_embd % head_dim)
        raise ConfigError(f"distill_n_embd: {n_embd} is not a multiple of the teacher's head "
                          f"size {head_dim} ({heads} heads over width {width}); the student "
                          f"keeps the head size: use {low} or {low + head_dim}")
    return n_embd // head_dim


DEFAULT_COMPRESSION = ("torch_int8_dynamic", "inc_woq_rtn", "modelopt_int8", "prune_structured")

# Every free-text field is bounded (a megabyte of URI would otherwise travel into every
# log line that names it): URIs and paths, and names.
URI_MAX, NAME_MAX = 2048, 100
# A URI the ingest stage accepts: the bundled demo, a local path, file:// or s3://.
DATASET_URI_PATTERN = r"^(demo://chatterbot|file://.+|s3://.+|[^:]+)$"
# What MLflow accepts as a registered model name, and what both DAGs' Params check.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
# A base model: none (train from scratch), a local folder, file://, s3://, an MLflow model
# URI or a model hub id (hf://org/name or org/name); tasks.train.base tells them apart.
BASE_MODEL_PATTERN = r"^(|models:/.+|s3://.+|file://.+|hf://.+|[^:]+)$"
LAUNCHERS = ("horovod", "ddp", "fsdp", "single")


def _f(default: Any, help: str, **schema: Any) -> Any:
    """A config field whose help text and JSON-schema bounds travel with it."""
    return field(default=default, metadata={"help": help, **schema})


class CheckedConfig:
    """A frozen dataclass whose fields carry their JSON schema: checked on construction,
    built from and written to JSON dicts, and turned into Airflow Params."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                # Arrays are tuples inside, as declared (the config is frozen and
                # hashable), lists in JSON and wherever a caller passes one.
                value = tuple(value)
                object.__setattr__(self, f.name, value)
            _check_field(f, value)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """Build from a conf dict; unknown keys are an error, not silently ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown config field (known: {sorted(names)})")
        # The trigger form sends an optional field that was left or made empty as null.
        optional = {f.name: type(f.default)() for f in dataclasses.fields(cls)
                    if _is_optional(f)}
        return cls(**{k: optional[k] if v is None and k in optional else v
                      for k, v in data.items()})

    @classmethod
    def load(cls, source: str) -> Any:
        """Parse a JSON string or a path to a JSON file."""
        text = Path(source).read_text() if not source.lstrip().startswith("{") else source
        return cls.from_dict(json.loads(text))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class LifecycleConfig(CheckedConfig):
    """Every knob of one lifecycle run; bounds are enforced here and in the UI form."""

    dataset_uri: str = _f(
        "demo://chatterbot",
        "Source dataset: demo://chatterbot (bundled English + Chinese dialogs), a local "
        "JSONL/CSV/Parquet path under an allowed root, or s3://bucket/key when configured.",
        pattern=DATASET_URI_PATTERN,
        minLength=1,
        maxLength=URI_MAX,
    )
    languages: tuple[str, ...] = _f(
        ("english", "chinese"),
        "Languages allowed in the data (and, for the demo, loaded from the corpus).",
        items={"type": "string", "enum": ["english", "chinese"]},
        minItems=1,
    )
    max_rows: int = _f(0, "Keep at most this many rows after ingest (0 = all).", minimum=0)
    min_chars: int = _f(1, "Shortest allowed prompt or response, in characters.", minimum=1)
    max_chars: int = _f(
        1500, "Longest allowed prompt or response, in characters.", minimum=8, maximum=8192
    )
    val_fraction: float = _f(0.1, "Share of prompts held out for validation.", minimum=0.01,
                             maximum=0.4)
    test_fraction: float = _f(0.1, "Share of prompts held out for the offline A/B test.",
                              minimum=0.01, maximum=0.4)
    base_model: str = _f(
        "", "Model to fine-tune. Empty: a small GPT-2 trained from scratch with its own "
        "tokenizer (the demo). Otherwise a Hugging Face causal LM (config, safetensors "
        "weights, tokenizer): a local folder under an allowed root (absolute, ./relative or "
        "file://), s3://bucket/prefix under an allowed S3 root, a registered version "
        "(models:/name@alias or models:/name/3; a compressed version trains from its "
        "uncompressed source), or a model hub id (hf://org/name or org/name) where the hub "
        "is reachable.", pattern=BASE_MODEL_PATTERN, maxLength=URI_MAX)
    finetune_method: str = _f(
        "full", "full: train every weight; lora: low-rank adapters on a frozen base_model "
        "(registered merged into the base).", enum=["full", "lora"])
    lora_r: int = _f(8, "LoRA rank.", minimum=1, maximum=1024)
    lora_alpha: float = _f(16.0, "LoRA alpha (the update is scaled by alpha / r).",
                           exclusiveMinimum=0, maximum=4096)
    lora_dropout: float = _f(0.05, "Dropout on the LoRA branch.", minimum=0, maximum=0.9)
    lora_target_modules: tuple[str, ...] = _f(
        (), "Module names LoRA adapts, e.g. q_proj (empty: the attention and MLP projections "
        "of the architecture).", items={"type": "string", "pattern": r"^[A-Za-z0-9_.]+$",
                                        "maxLength": NAME_MAX}, maxItems=64,
        uniqueItems=True)
    loss_on_prompt: bool = _f(False, "Train on the prompt tokens too; by default only the "
                              "response tokens carry loss.")
    vocab_size: int = _f(1024, "From scratch only: BPE vocabulary size of the trained "
                         "tokenizer.", minimum=300, maximum=65536)
    n_layer: int = _f(4, "From scratch only: transformer layers.", minimum=1, maximum=48)
    n_embd: int = _f(128, "From scratch only: hidden width, a multiple of n_head.", minimum=16,
                     maximum=4096)
    n_head: int = _f(4, "From scratch only: attention heads.", minimum=1, maximum=64)
    dropout: float = _f(0.1, "From scratch only: dropout on embeddings, attention and "
                        "residuals (a base model keeps its own).", minimum=0, maximum=0.9)
    block_size: int = _f(64, "Tokens per training sequence (the context of a model trained "
                         "from scratch; at most a base model's context).", minimum=16,
                         maximum=8192)
    batch_size: int = _f(16, "Sequences per optimizer step.", minimum=1, maximum=1024)
    grad_accumulation: int = _f(
        1, "Micro-batches each worker splits its share of a step into (the step's batch and "
        "its trajectory are unchanged; less memory). Doubled by itself on the retry of an "
        "attempt that died out of memory.", minimum=1, maximum=1024)
    max_steps: int = _f(600, "Optimizer steps to train.", minimum=1, maximum=1_000_000)
    learning_rate: float = _f(3e-3, "Peak AdamW learning rate.", exclusiveMinimum=0, maximum=1.0)
    warmup_steps: int = _f(50, "Linear warm-up steps before cosine decay.", minimum=0)
    weight_decay: float = _f(0.01, "AdamW weight decay.", minimum=0, maximum=1.0)
    checkpoint_every: int = _f(100, "Write a resumable checkpoint every N steps.", minimum=1)
    eval_every: int = _f(100, "Measure validation loss every N steps.", minimum=1)
    launcher: str = _f(
        "horovod", "How training runs: horovod (horovodrun, gloo), ddp (torchrun, data "
        "parallel), fsdp (torchrun, FSDP2: parameters, gradients and optimizer state sharded "
        "across workers) or single.", enum=list(LAUNCHERS))
    workers: int = _f(2, "Training processes per node (ignored by launcher=single).",
                      minimum=1, maximum=64)
    precision: str = _f("fp32", "fp32; bf16 autocast (CPU or GPU); fp16 with GradScaler "
                        "(CUDA only).", enum=["fp32", "bf16", "fp16"])
    compute_target: str = _f(
        "local", "Where heavy stages run: local (a process of the Airflow worker) or "
        "kubernetes (a pod; a Kubeflow job when nodes > 1); it must be what the deployment "
        "offers.", enum=["local", "kubernetes"])
    nodes: int = _f(1, "Training nodes; more than one needs compute_target=kubernetes: "
                    "an MPIJob for horovod, a Kubeflow Trainer TrainJob for ddp and fsdp.",
                    minimum=1, maximum=256)
    seed: int = _f(1234, "Seed for splits, initialisation, batching and sampling.", minimum=0)
    model_name: str = _f("", "Registered model name in MLflow (empty: the registered model a "
                         "models:/ base belongs to, else aigc-<architecture>: aigc-gpt2 for "
                         "the demo, aigc-llama for a Llama base).",
                         pattern=f"^$|{MODEL_NAME_PATTERN}", maxLength=NAME_MAX)
    eval_samples: int = _f(64, "Held-out prompts sampled for distinct-n and similarity.",
                           minimum=1, maximum=10000)
    max_new_tokens: int = _f(24, "Tokens generated per evaluation prompt.", minimum=1,
                             maximum=512)
    max_perplexity: float = _f(
        200.0, "Absolute gate: highest held-out token perplexity that may be promoted.",
        exclusiveMinimum=1,
    )
    min_distinct_2: float = _f(0.2, "Absolute gate: lowest distinct-2 of sampled generations.",
                               minimum=0, maximum=1)
    min_similarity: float = _f(
        0.15, "Absolute gate: lowest mean cosine similarity of generations to references.",
        minimum=-1, maximum=1,
    )
    max_regression: float = _f(
        0.02, "A/B gate: largest relative loss versus the champion allowed on any metric.",
        minimum=0, maximum=1,
    )
    compress_methods: tuple[str, ...] = _f(
        DEFAULT_COMPRESSION,
        "Compression candidates to build after training (empty: no compression). "
        "tensorrt_int8 needs a CUDA GPU with TensorRT.",
        items={"type": "string", "enum": list(COMPRESSION_METHODS)}, uniqueItems=True,
    )
    compress_policy: str = _f("fastest", "Which passing candidate becomes the challenger.",
                              enum=["smallest", "fastest"])
    compress_max_quality_loss: float = _f(
        0.01, "Compression gate: largest relative increase in held-out perplexity.",
        minimum=0, maximum=1)
    compress_min_speedup: float = _f(
        1.0, "Compression gate: least CPU latency speed-up over the uncompressed model.",
        minimum=0, maximum=100)
    compress_max_size_ratio: float = _f(
        1.0, "Compression gate: largest size on disk relative to the uncompressed model.",
        exclusiveMinimum=0, maximum=10)
    latency_batch: int = _f(8, "Batch size at which compression latency is measured.",
                            minimum=1, maximum=256)
    calibration_batches: int = _f(8, "Training batches used to calibrate quantizers.",
                                  minimum=1, maximum=1000)
    woq_bits: int = _f(8, "Weight-only quantization bits.", enum=[2, 4, 8])
    woq_group_size: int = _f(32, "Weight-only quantization group size.", enum=[16, 32, 64, 128])
    finetune_steps: int = _f(100, "Recovery fine-tune steps after pruning and for QAT.",
                             minimum=1, maximum=100_000)
    prune_sparsity: float = _f(0.4, "Share of the transformer blocks' weights pruned.",
                               minimum=0.05, maximum=0.6)
    distill_teacher: str = _f("challenger", "Distillation teacher: the fresh challenger or the "
                              "current champion (falls back to the challenger).",
                              enum=["challenger", "champion"])
    distill_n_layer: int = _f(2, "Student layers.", minimum=1, maximum=48)
    distill_n_embd: int = _f(96, "Student width.", minimum=16, maximum=4096)
    distill_steps: int = _f(600, "Student training steps.", minimum=1, maximum=1_000_000)
    distill_temperature: float = _f(2.0, "Softmax temperature of the distillation loss.",
                                    exclusiveMinimum=0, maximum=20)
    distill_alpha: float = _f(0.5, "Weight of the KL term (the rest is the LM loss).",
                              minimum=0, maximum=1)

    canary_steps: tuple[int, ...] = _f(
        (5, 25, 50, 100),
        "Challenger traffic percent at each canary step, rising to 100 (empty: no canary; "
        "promotion then rests on the offline evaluation alone).",
        items={"type": "integer", "minimum": 1, "maximum": 100}, uniqueItems=True,
        maxItems=100)
    canary_interval_s: float = _f(60.0, "Seconds of traffic observed per canary analysis.",
                                  minimum=1, maximum=86400)
    canary_min_requests: int = _f(50, "Requests each version must serve at a step before it "
                                  "may advance.", minimum=1, maximum=10_000_000)
    canary_max_holds: int = _f(3, "Analyses without enough traffic before the canary gives "
                               "up and rolls back.", minimum=0, maximum=100)
    canary_max_error_rate_increase: float = _f(
        0.02, "Largest error-rate rise (absolute) over the champion before rollback (when "
        "significant).", minimum=0, maximum=1)
    canary_max_p99_ratio: float = _f(1.5, "Largest challenger/champion P99 latency ratio.",
                                     minimum=1, maximum=100)
    canary_min_feedback: int = _f(20, "Feedback per version before the feedback A/B test "
                                  "counts.", minimum=1, maximum=10_000_000)
    canary_alpha: float = _f(0.05, "Significance level of the online A/B tests.",
                             exclusiveMinimum=0, maximum=0.5)
    canary_traffic: str = _f(
        "auto", "Canary traffic: real users, or a synthetic loopback load (auto: synthetic "
        "when the stage started its own local server).", enum=["auto", "synthetic", "real"])
    canary_concurrency: int = _f(4, "Concurrent users of the synthetic load.", minimum=1,
                                 maximum=256)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd: {self.n_embd} is not a multiple of n_head={self.n_head}")
        if ("distill" in self.compress_methods and not self.base_model
                and self.distill_teacher == "challenger"):
            student_heads(self.n_embd, self.n_head, self.distill_n_embd)
        if self.val_fraction + self.test_fraction >= 0.5:
            raise ConfigError("val_fraction + test_fraction: must leave most data for training")
        if self.min_chars > self.max_chars:
            raise ConfigError("min_chars: larger than max_chars")
        if self.nodes > 1 and (self.compute_target != "kubernetes" or self.launcher == "single"):
            raise ConfigError("nodes: more than one node needs compute_target=kubernetes and "
                              "a distributed launcher (horovod, ddp or fsdp)")
        problem = self.canary_steps and steps_problem(self.canary_steps)
        if problem:
            raise ConfigError(f"canary_steps: {list(self.canary_steps)} {problem}")
        if self.finetune_method == "lora" and not self.base_model:
            raise ConfigError("finetune_method: lora needs a base_model (adapters on a "
                              "randomly initialised model learn next to nothing)")
        if self.warmup_steps >= self.max_steps:
            raise ConfigError(f"warmup_steps: {self.warmup_steps} is not below "
                              f"max_steps={self.max_steps}")
        if self.batch_size % (self.world_size * self.grad_accumulation):
            raise ConfigError(f"batch_size: {self.batch_size} is not divisible by "
                              f"workers={self.world_size} x grad_accumulation="
                              f"{self.grad_accumulation}")

    @property
    def world_size(self) -> int:
        """Training processes in total: the global batch is split evenly across them."""
        return 1 if self.launcher == "single" else self.workers * self.nodes

    @property
    def micro_batch(self) -> int:
        """Sequences in one forward and backward pass of one worker."""
        return self.batch_size // (self.world_size * self.grad_accumulation)



@dataclass(frozen=True)
class FeedbackConfig(CheckedConfig):
    """The feedback DAG's knobs: drift windows, retrain thresholds, cooldown, what trains."""

    model_name: str = _f("aigc-gpt2", "Registered model whose champion is watched.",
                         pattern=MODEL_NAME_PATTERN, maxLength=NAME_MAX)
    window_hours: float = _f(24.0, "Recent window: the champion's feedback and responses "
                             "in the last N hours.", exclusiveMinimum=0, maximum=8760)
    baseline_hours: float = _f(168.0, "Baseline window: the N hours before the recent one.",
                               exclusiveMinimum=0, maximum=8760)
    min_new_feedback: int = _f(100, "New well-rated feedback rows that alone justify "
                               "retraining.", minimum=1, maximum=10_000_000)
    max_negative_rate_increase: float = _f(
        0.10, "Drift: rise of the champion's negative-feedback rate (recent minus baseline) "
        "that triggers retraining.", exclusiveMinimum=0, maximum=1)
    min_window_feedback: int = _f(30, "Feedback per window before its negative rate counts.",
                                  minimum=1, maximum=10_000_000)
    max_diversity_drop: float = _f(
        0.25, "Drift: relative drop of distinct-2 over the champion's responses that triggers "
        "retraining.", exclusiveMinimum=0, maximum=1)
    min_window_responses: int = _f(50, "Responses per window before diversity counts.",
                                   minimum=1, maximum=10_000_000)
    cooldown_hours: float = _f(24.0, "No retraining trigger within N hours of the last one.",
                               minimum=0, maximum=8760)
    min_rating: int = _f(4, "Rated feedback at or above this (or thumbs up) trains; the rest "
                         "is excluded.", minimum=1, maximum=5)


# The trigger form's sections, in the order they are shown; every field is in one.
SECTIONS: dict[type, dict[str, tuple[str, ...]]] = {LifecycleConfig: {
    "Data": ("dataset_uri", "languages", "max_rows", "min_chars", "max_chars", "val_fraction",
             "test_fraction"),
    "Model": ("base_model", "model_name", "finetune_method", "lora_r", "lora_alpha",
              "lora_dropout", "lora_target_modules", "loss_on_prompt", "vocab_size",
              "n_layer", "n_embd", "n_head", "dropout", "block_size"),
    "Training": ("launcher", "workers", "nodes", "compute_target", "precision", "batch_size",
                 "grad_accumulation", "max_steps", "learning_rate", "warmup_steps", "weight_decay",
                 "checkpoint_every", "eval_every", "seed"),
    "Compression": ("compress_methods", "compress_policy", "compress_max_quality_loss",
                    "compress_min_speedup", "compress_max_size_ratio", "latency_batch",
                    "calibration_batches", "woq_bits", "woq_group_size", "finetune_steps",
                    "prune_sparsity", "distill_teacher", "distill_n_layer", "distill_n_embd",
                    "distill_steps", "distill_temperature", "distill_alpha"),
    "Evaluation": ("eval_samples", "max_new_tokens", "max_perplexity", "min_distinct_2",
                   "min_similarity", "max_regression"),
    "Canary": ("canary_steps", "canary_interval_s", "canary_min_requests", "canary_max_holds",
               "canary_max_error_rate_increase", "canary_max_p99_ratio",
               "canary_min_feedback", "canary_alpha", "canary_traffic", "canary_concurrency"),
}, FeedbackConfig: {
    "Watch": ("model_name", "window_hours", "baseline_hours", "min_window_feedback",
              "min_window_responses"),
    "Retrain when": ("min_new_feedback", "max_negative_rate_increase", "max_diversity_drop",
                     "cooldown_hours", "min_rating"),
}}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, tuple | list):
        return "array"
    return "string"


def field_schema(f: dataclasses.Field) -> dict[str, Any]:
    """The JSON schema of one field, as Airflow Params and the validator read it."""
    meta = dict(f.metadata)
    meta.pop("help")
    return {"type": _json_type(f.default), **meta}


def _is_optional(f: dataclasses.Field) -> bool:
    """A field that may be empty: a text whose empty value means 'not set' (a base model,
    a name) or a list that may have no items (no compression method, no target module)."""
    if isinstance(f.default, tuple):
        return not f.metadata.get("minItems")
    return f.default == ""


def _shown(value: Any) -> str:
    """A refused value as an error quotes it."""
    return cut(repr(value), 80)


def _check_field(f: dataclasses.Field, value: Any) -> None:
    """Enforce the same type and bounds that the Params schema declares."""
    schema = field_schema(f)
    kind = schema["type"]
    ok_type = {
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "string": isinstance(value, str),
        "array": isinstance(value, tuple | list),
        "boolean": isinstance(value, bool),
    }[kind]
    if not ok_type:
        raise ConfigError(f"{f.name}: expected {kind}, got {_shown(value)}")
    if kind in ("integer", "number"):
        if "minimum" in schema and value < schema["minimum"]:
            raise ConfigError(f"{f.name}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise ConfigError(f"{f.name}: {value} is above the maximum {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            raise ConfigError(f"{f.name}: {value} must be above {schema['exclusiveMinimum']}")
    if "enum" in schema and value not in schema["enum"]:
        raise ConfigError(f"{f.name}: {_shown(value)} is not one of {schema['enum']}")
    if kind == "string":
        if len(value) < schema.get("minLength", 0):
            raise ConfigError(f"{f.name}: must not be empty")
        if len(value) > schema.get("maxLength", len(value)):
            raise ConfigError(f"{f.name}: {len(value):,} characters, over the limit of "
                              f"{schema['maxLength']:,}")
        if "pattern" in schema and not re.fullmatch(schema["pattern"], value):
            raise ConfigError(f"{f.name}: {_shown(value)} does not match {schema['pattern']}")
    if kind == "array":
        if len(value) < schema.get("minItems", 0):
            raise ConfigError(f"{f.name}: needs at least {schema['minItems']} item(s)")
        if len(value) > schema.get("maxItems", len(value)):
            raise ConfigError(f"{f.name}: {len(value)} items, over the limit of "
                              f"{schema['maxItems']}")
        if schema.get("uniqueItems") and len(set(value)) != len(value):
            raise ConfigError(f"{f.name}: lists an item twice")
        for item in value:
            _check_item(f.name, schema["items"], item)


def _check_item(name: str, schema: dict[str, Any], item: Any) -> None:
    """One array item against its schema (type, bounds, enum)."""
    if schema["type"] == "integer" and (not isinstance(item, int) or isinstance(item, bool)):
        raise ConfigError(f"{name}: item {_shown(item)} is not an integer")
    if schema["type"] == "string" and not isinstance(item, str):
        raise ConfigError(f"{name}: item {_shown(item)} is not a string")
    if schema["type"] == "string" and len(item) > schema.get("maxLength", len(item)):
        raise ConfigError(f"{name}: an item of {len(item):,} characters, over the limit of "
                          f"{schema['maxLength']:,}")
    if "minimum" in schema and item < schema["minimum"]:
        raise ConfigError(f"{name}: item {item} is below the minimum {schema['minimum']}")
    if "maximum" in schema and item > schema["maximum"]:
        raise ConfigError(f"{name}: item {item} is above the maximum {schema['maximum']}")
    if "enum" in schema and item not in schema["enum"]:
        raise ConfigError(f"{name}: {_shown(item)} is not one of {schema['enum']}")
    if "pattern" in schema and not re.fullmatch(schema["pattern"], item):
        raise ConfigError(f"{name}: item {_shown(item)} does not match {schema['pattern']}")


def _sections(cls: type[CheckedConfig]) -> dict[str, str]:
    """Field name -> its section of the trigger form."""
    return {name: section for section, names in SECTIONS.get(cls, {}).items()
            for name in names}


def _bounds_text(schema: dict[str, Any]) -> str:
    """A number field's bounds in words, for its description in the trigger form."""
    def num(v: Any) -> str:
        return f"{v:,}" if isinstance(v, int) else f"{v:g}"

    low = (f"at least {num(schema['minimum'])}" if "minimum" in schema
           else f"above {num(schema['exclusiveMinimum'])}" if "exclusiveMinimum" in schema
           else "")
    high = f"at most {num(schema['maximum'])}" if "maximum" in schema else ""
    return f" ({', '.join(p for p in (low, high) if p)})" if low or high else ""


def form_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A field's schema as Airflow's trigger form should get it.

    The form passes top-level minimum/maximum to its number input, which clamps an
    out-of-range entry without a word (-1 becomes 1); under `allOf` the same bounds reach
    only the server's validation, which refuses the run naming the field. A list of
    choices needs `examples` for the form to offer them as a multi-select."""
    bounds = {k: schema[k] for k in ("minimum", "maximum", "exclusiveMinimum")
              if k in schema}
    out = {k: v for k, v in schema.items() if k not in bounds}
    if bounds:
        out["allOf"] = [bounds]
    if out["type"] == "array" and "enum" in out.get("items", {}):
        out["examples"] = list(out["items"]["enum"])
    return out


def params_schema(cls: type[CheckedConfig] = LifecycleConfig,
                  defaults: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Per-field default, description (with its bounds), trigger-form section and schema:
    the source of a DAG's Airflow Params. `defaults` (a validated config's dict) replaces
    the built-in defaults."""
    defaults = defaults or cls().to_dict()
    sections = _sections(cls)
    specs = {}
    for f in dataclasses.fields(cls):
        schema = field_schema(f)
        form = form_schema(schema)
        if _is_optional(f):
            # The form refuses a required field left empty; these may be empty (or null).
            form["type"] = [schema["type"], "null"]
        specs[f.name] = {"default": defaults[f.name],
                         "description": f.metadata["help"] + _bounds_text(schema),
                         **({"section": sections[f.name]} if f.name in sections else {}),
                         **form}
    return specs
