"""A registry holding a tiny trained model as several versions (healthy and broken), and a
real server process on loopback."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.cli import run_stage
from tasks.config import LifecycleConfig
from tasks.stage import StageContext
from tests.conftest import TINY, isolated_settings, prepare_demo, scratch_base

SERVE = TINY | {"launcher": "single", "max_steps": 40}


@dataclass(frozen=True)
class Registry:
    root: Path
    settings: object
    prep: dict
    name: str
    versions: dict[str, str]  # role -> version: champion, healthy, broken, slow, corrupt

    def env(self) -> dict[str, str]:
        return self.settings.to_env() | {"AIGC_MODEL_NAME": self.name}

    def point(self, champion: str, challenger: str) -> None:
        import mlflow

        mlflow.set_tracking_uri(self.settings.tracking_uri)
        client = mlflow.MlflowClient()
        client.set_registered_model_alias(self.name, "champion", champion)
        client.set_registered_model_alias(self.name, "challenger", challenger)


def _faulty_dir(model_dir: str, target: Path, mode: str) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.lm.artifact import LogitsOf, write_manifest
    from tests.serving.faulty import Faulty

    target.mkdir(parents=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.save(Faulty(LogitsOf(model), mode), target / "model.pt")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(str(target))
    write_manifest(target, "torch", model.config.n_positions)
    return str(target)


def _corrupt_dir(model_dir: str, target: Path) -> str:
    """A version that cannot load: its weights file holds no model."""
    from transformers import AutoTokenizer

    from tasks.lm.artifact import write_manifest

    target.mkdir(parents=True)
    (target / "model.pt").write_bytes(b"not a model")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(str(target))
    write_manifest(target, "torch", 32)
    return str(target)


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> Registry:
    from tasks.registry.register import register
    from tasks.tracking import stage_run

    root = tmp_path_factory.mktemp("serving")
    settings = isolated_settings(root)
    prep = prepare_demo(root)
    cfg = LifecycleConfig.from_dict(SERVE)
    train = run_stage(StageContext(stage="train", dag_id="d", run_id="r", config=cfg,
                                   inputs={"preprocess": prep, "base_model": scratch_base()},
                                   settings=settings))
    model_dir = train["model_uri"]
    dirs = {"champion": model_dir, "healthy": model_dir,
            "broken": _faulty_dir(model_dir, root / "broken", "raise"),
            "slow": _faulty_dir(model_dir, root / "slow", "slow"),
            "corrupt": _corrupt_dir(model_dir, root / "corrupt")}
    ctx = StageContext(stage="register", dag_id="d", run_id="r", config=cfg, settings=settings)
    versions = {}
    with stage_run(ctx):
        for role, folder in dirs.items():
            versions[role] = register(ctx, cfg.model_name, folder, role,
                                      {"aigc.test_role": role})
    reg = Registry(root, settings, prep, cfg.model_name, versions)
    reg.point(versions["champion"], versions["healthy"])
    return reg


@dataclass(frozen=True)
class Server:
    url: str
    api_key: str
    admin_key: str
    feedback_db: Path
    user_hash_key: str
    proc: object = None  # the server's process (a test may signal it)
    log: Path | None = None

    def headers(self, admin: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key if admin else self.api_key}"}


def new_keys() -> dict[str, str]:
    return {"AIGC_API_KEYS": secrets.token_hex(8), "AIGC_ADMIN_KEY": secrets.token_hex(8),
            "AIGC_USER_HASH_KEY": secrets.token_hex(16)}


def start_server(registry: Registry, tmp: Path, keys: dict[str, str] | None = None,
                 **env: str) -> Iterator[Server]:
    from serving.local import local_server

    keys = keys or new_keys()
    db = tmp / "feedback.db"
    with local_server(registry.env() | keys | {"AIGC_FEEDBACK_DB": str(db),
                                               "AIGC_RELOAD_INTERVAL_S": "0.5"} | env,
                      tmp / "server.log") as server:
        yield Server(server.url, keys["AIGC_API_KEYS"].split(",")[0], keys["AIGC_ADMIN_KEY"],
                     db, keys.get("AIGC_USER_HASH_KEY", ""), server.proc, tmp / "server.log")

