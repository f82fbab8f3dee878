"""Base model stage: resolve `base_model` to a checked local checkpoint before any training,
so a wrong model fails the run at its first stage (nothing registered), and name the model
the run registers.

Sources, told apart by their form:
- empty: the demo's small GPT-2, trained from scratch with its own tokenizer;
- a local folder: an absolute path, ./relative, ../relative or file:// (under an allowed
  root); a relative id-shaped path that exists locally is a folder too;
- s3://bucket/prefix (under an allowed S3 root): copied once into this run's artifacts;
- models:/name@alias or models:/name/<version>: a registered version, downloaded into this
  run's artifacts; a compressed version continues from its uncompressed source version;
- hf://org/name, org/name or name: a model hub repository, where the hub is reachable.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from tasks.config import LifecycleConfig
from tasks.errors import BadInput, ConfigError
from tasks.lm.template import prepare_tokenizer
from tasks.locations import resolve_location
from tasks.stage import StageContext, atomic_path
from tasks.tracking import stage_run

# The model libraries (torch, transformers) are imported where a base model is fetched or
# checked: the demo's from-scratch run, this stage's common case, needs none of them.
log = logging.getLogger(__name__)
SCRATCH_TYPE = "gpt2"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(@(?P<alias>[\w.-]+)|/(?P<version>\d+))$")


def source_kind(source: str) -> str:
    """scratch, local, s3, mlflow or hub."""
    if not source:
        return "scratch"
    if source.startswith("models:/"):
        return "mlflow"
    if source.startswith("s3://"):
        return "s3"
    if source.startswith("hf://"):
        return "hub"
    if HUB_ID.match(source) and not Path(source).exists():
        return "hub"
    return "local"


def registered_name(model_name: str, model_type: str, lineage: dict[str, str]) -> str:
    """The configured name; else the registered model a version continues; else
    aigc-<architecture>."""
    return model_name or lineage.get("aigc.base_model.name") or f"aigc-{model_type}"


def _from_registry(source: str, target: Path) -> tuple[Path, dict[str, str]]:
    """Download a registered version (a compressed one's uncompressed source instead)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from tasks.lm.artifact import manifest
    from tasks.registry.model import model_folder

    match = MODEL_URI.match(source)
    if match is None:
        raise ConfigError(f"base_model: {source!r} is not models:/<name>@<alias> or "
                          "models:/<name>/<version>")
    name, client = match["name"], mlflow.MlflowClient()
    try:
        mv = (client.get_model_version_by_alias(name, match["alias"]) if match["alias"]
              else client.get_model_version(name, match["version"]))
    except MlflowException as exc:
        raise BadInput(f"base_model: {source!r} names no registered version ({exc.message})"
                       ) from exc
    version = str(mv.version)
    if mv.tags.get("aigc.role", "").startswith("compressed:"):
        version = mv.tags.get("aigc.compress.base_version", "")
        if not version:
            raise BadInput(f"base_model: version {mv.version} of {name} is compressed and "
                           "names no uncompressed source version to continue from")
        log.info("version %s is compressed: continuing from its source version %s",
                 mv.version, version)
    target = target / f"{name}-v{version}"
    if not target.is_dir():  # downloaded once: a retried stage finds the complete copy
        with atomic_path(target) as tmp:
            tmp.mkdir()
            mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=str(tmp))
    folder = model_folder(next(target.rglob("MLmodel")).parent)
    fmt = manifest(folder)["format"]
    if fmt != "hf":
        raise BadInput(f"base_model: version {version} of {name} is a {fmt} artifact, not a "
                       "trainable transformers model")
    return folder, {"aigc.base_model.name": name, "aigc.base_model.version": version}


def fetch(ctx: StageContext) -> tuple[Path, dict[str, str]]:
    """The base checkpoint as a local folder, and lineage tags naming where it came from."""
    from tasks.lm.source import fetch_hub, fetch_s3

    source, roots = ctx.config.base_model, ctx.settings.allowed_roots
    kind = source_kind(source)
    target = ctx.stage_dir / "download"
    if kind == "local":
        return Path(resolve_location(source, roots, field="base_model", folder=True)), {}
    if kind == "s3":
        uri = resolve_location(source, roots, field="base_model", folder=True)
        return fetch_s3(uri, target / "s3"), {}
    if kind == "hub":
        return fetch_hub(source.removeprefix("hf://"), target / "hub"), {}
    return _from_registry(source, target / "registry")


def check(ctx: StageContext, folder: Path) -> dict[str, Any]:
    """Everything that would fail later, checked now: the checkpoint, its context against
    block_size, its tokenizer's chat template and LoRA's target modules."""
    from transformers import AutoTokenizer

    from tasks.lm.lora import resolve_targets
    from tasks.lm.source import inspect_checkpoint, meta_model

    cfg = ctx.config
    info = inspect_checkpoint(folder, cfg.base_model)
    if cfg.block_size > info.context:
        raise ConfigError(f"block_size: {cfg.block_size} is longer than the base model's "
                          f"context ({info.context} tokens)")
    template = prepare_tokenizer(AutoTokenizer.from_pretrained(str(folder)))
    result = info.to_dict() | {"chat_template": template}
    if cfg.finetune_method == "lora":
        result["lora_target_modules"] = resolve_targets(meta_model(folder),
                                                        cfg.lora_target_modules)
    return result


def describe(cfg: LifecycleConfig, kind: str, found: dict[str, Any],
             lineage: dict[str, str]) -> dict[str, Any]:
    """The stage's result: what the base is, where it is, and the registered model's name."""
    return found | {"source": cfg.base_model, "kind": kind, "lineage": lineage,
                    "model_name": registered_name(cfg.model_name, found["model_type"],
                                                  lineage)}


def scratch(cfg: LifecycleConfig) -> dict[str, Any]:
    """The result for the from-scratch demo model: nothing to fetch or check."""
    return describe(cfg, "scratch", {"model_type": SCRATCH_TYPE, "model_dir": None,
                                     "architecture": "GPT2LMHeadModel",
                                     "chat_template": "demo"}, {})


def run(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.config
    kind = source_kind(cfg.base_model)
    lineage: dict[str, str] = {}
    if kind == "scratch":
        result = scratch(cfg)
    else:
        folder, lineage = fetch(ctx)
        result = describe(cfg, kind, check(ctx, folder) | {"model_dir": str(folder)}, lineage)
    with stage_run(ctx) as run_:
        run_.log_params({"base_model": cfg.base_model or "none (from scratch)", "kind": kind,
                         "model_type": result["model_type"],
                         "finetune_method": cfg.finetune_method})
        run_.set_tags({"aigc.base_model": cfg.base_model or "scratch", **lineage}, parent=True)
    log.info("base model: %s (%s, %s); registers as %s", cfg.base_model or "from scratch",
             kind, result["model_type"], result["model_name"])
    return result
