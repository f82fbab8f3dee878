"""Base model checkpoints: what a usable one holds, and fetching one from S3 or a model hub.

A usable checkpoint is a transformers causal LM folder: config.json, safetensors weights and
a tokenizer. Everything here is checked from the files and the config alone (the network is
built on the meta device, no weights are read), so a wrong checkpoint fails in seconds.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasks.errors import BadInput
from tasks.lm.artifact import context_length
from tasks.stage import atomic_path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# Files a checkpoint needs; anything else in a hub repository (other formats, docs) is not
# downloaded.
CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


@dataclass(frozen=True)
class ModelInfo:
    """What the lifecycle reads off a base checkpoint."""

    model_type: str
    architecture: str
    parameters: int
    context: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _causal_classes() -> tuple[set[str], set[str]]:
    """(model types, class names) transformers can load as AutoModelForCausalLM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    classes: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        classes.update([value] if isinstance(value, str) else value)
    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES), classes


def _parameters(folder: Path) -> int:
    """Weights counted from the safetensors headers (nothing is loaded)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                total += math.prod(f.get_slice(key).get_shape())
    return total


def inspect_checkpoint(folder: Path, source: str) -> ModelInfo:
    """Check that folder holds a transformers causal LM; every refusal names `source` (what
    the user configured) and what is missing or wrong."""
    from transformers import AutoConfig

    if not (folder / "config.json").is_file():
        raise BadInput(f"base_model: {source!r} has no config.json (a Hugging Face model "
                       "folder holds config.json, *.safetensors weights and a tokenizer)")
    if not list(folder.glob("*.safetensors")):
        found = sorted(p.name for p in folder.iterdir())[:10]
        raise BadInput(f"base_model: {source!r} has no *.safetensors weights (found: {found}); "
                       "save the model with save_pretrained(), which writes safetensors")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise BadInput(f"base_model: {source!r} has no tokenizer (none of {TOKENIZER_FILES})")
    raw = json.loads((folder / "config.json").read_text())
    if raw.get("auto_map"):
        raise BadInput(f"base_model: {source!r} needs custom modelling code "
                       "(trust_remote_code), which the lifecycle does not run")
    config = AutoConfig.from_pretrained(str(folder))
    types, classes = _causal_classes()
    architecture = (config.architectures or [""])[0]
    if config.model_type not in types or (architecture and architecture not in classes):
        raise BadInput(f"base_model: {source!r} is a {architecture or config.model_type}, "
                       "not a causal language model (AutoModelForCausalLM cannot load it)")
    return ModelInfo(model_type=config.model_type,
                     architecture=architecture or f"{config.model_type} (causal LM)",
                     parameters=_parameters(folder), context=context_length(config))


def meta_model(folder: Path) -> Any:
    """The architecture of a checkpoint on the meta device: module names and shapes, no
    memory and no weights read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder)))


def fetch_s3(uri: str, target: Path) -> Path:
    """Copy every object under an s3:// prefix into target (once: a complete copy from an
    earlier attempt is kept; an interrupted one is never seen)."""
    import fsspec

    if (target / "config.json").is_file():
        return target
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        names = [p for p in fs.find(path) if not p.endswith("/")]
    except Exception as exc:  # noqa: BLE001 - any storage error: reported with the cause
        raise BadInput(f"base_model: cannot list {uri!r}: {type(exc).__name__}: {exc}") from exc
    if not names:
        raise BadInput(f"base_model: {uri!r} holds no objects")
    prefix = path.rstrip("/") + "/"
    with atomic_path(target) as tmp:
        for name in names:
            local = tmp / name[len(prefix):]
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(name, str(local))
    return target


def fetch_hub(repo_id: str, target: Path) -> Path:
    """Download a model hub repository's checkpoint files into target. An unreachable hub
    or an unknown repository is bad input: retrying would not help, so it fails at once."""
    import os

    if (target / "config.json").is_file():
        return target
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise BadInput(f"base_model: {repo_id!r} is a model hub id, but the hub is switched "
                       "off here (HF_HUB_OFFLINE is set); copy the model into an allowed "
                       "folder or S3 prefix instead")
    from huggingface_hub import snapshot_download

    with atomic_path(target) as tmp:
        try:
            snapshot_download(repo_id, local_dir=str(tmp), allow_patterns=CHECKPOINT_PATTERNS)
        except Exception as exc:  # noqa: BLE001 - network, auth or unknown repository
            raise BadInput(f"base_model: cannot download {repo_id!r} from the model hub "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); "
                           "copy the model into an allowed folder or S3 prefix instead"
                           ) from exc
    return target
