"""Shared fixtures: an isolated embedded-default home per test and a tiny run config."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from tasks.config import LifecycleConfig
from tasks.localenv import local_env
from tasks.stage import StageContext

# The served-model registry and server fixtures, shared by the serving and rollout tests.
pytest_plugins = ("tests.serving.fixtures",)

# Small enough to train in seconds, big enough that learning is measurable.
TINY: dict = {
    "max_rows": 400, "vocab_size": 400, "n_layer": 1, "n_embd": 32, "n_head": 2,
    "block_size": 32, "batch_size": 8, "max_steps": 40, "warmup_steps": 5,
    "checkpoint_every": 10, "eval_every": 20, "eval_samples": 8, "max_new_tokens": 8,
    "max_perplexity": 100000.0, "min_distinct_2": 0.0, "min_similarity": -1.0,
    "max_regression": 1.0, "canary_steps": [50, 100], "canary_interval_s": 2.0,
    "canary_min_requests": 5, "canary_concurrency": 2, "model_name": "aigc-gpt2",
}


def scratch_base() -> dict:
    """The base_model stage's result for the from-scratch demo model (a train input)."""
    from tasks.train.base import scratch

    return scratch(LifecycleConfig.from_dict(TINY))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every setting (artifacts, MLflow, Airflow) at a fresh temporary folder."""
    for key, value in local_env(tmp_path / "var").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AIGC_ALLOWED_ROOTS", str(tmp_path))
    return tmp_path


@pytest.fixture
def tiny() -> LifecycleConfig:
    return LifecycleConfig.from_dict(TINY)


def write_dataset(path: Path, rows: list[dict]) -> Path:
    """Write rows in the format the suffix names (jsonl, csv or parquet)."""
    frame = pd.DataFrame(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def isolated_settings(root: Path):
    """Settings that keep artifacts and MLflow under root, with no environment involved."""
    from tasks.settings import Settings

    return Settings(artifact_root=root, allowed_roots=(str(root),),
                    tracking_uri=f"sqlite:///{root}/mlflow.db",
                    mlflow_artifact_root=str(root / "mlartifacts"), experiment="t",
                    feedback_db=str(root / "feedback.db"))


def prepare_demo(root: Path, rows: int = 400) -> dict:
    """A preprocessed demo sample (splits + tokenizer): the preprocess stage's result."""
    from tasks.data.preprocess import run as preprocess
    from tasks.data.source import load_demo

    path = root / "masked.parquet"
    load_demo(["english", "chinese"]).sample(n=rows, random_state=0).to_parquet(path)
    ctx = StageContext(stage="preprocess", dag_id="d", run_id="prep",
                       config=LifecycleConfig.from_dict(TINY),
                       inputs={"validate": {"dataset_uri": str(path)},
                               "base_model": scratch_base()},
                       settings=isolated_settings(root))
    return preprocess(ctx)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(root, preprocess result) of a demo sample, once per test module."""
    root = tmp_path_factory.mktemp("prepared")
    return root, prepare_demo(root)


def train_context(prepared, run_id: str, dag_id: str = "d", **conf) -> StageContext:
    """The train stage of the from-scratch demo model on a prepared sample (TINY + conf)."""
    root, prep = prepared
    return StageContext(stage="train", dag_id=dag_id, run_id=run_id,
                        config=LifecycleConfig.from_dict(TINY | conf),
                        inputs={"preprocess": prep, "base_model": scratch_base()},
                        settings=isolated_settings(root))


def require_service(name: str, host: str, port: int) -> None:
    """Tests that need a local service: skipped with the reason where it is absent, but a
    failure in CI, which provides every service."""
    import socket

    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError as exc:
        message = f"{name} is not reachable at {host}:{port} ({exc})"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must provide it")
        pytest.skip(f"{message}; start it to run this test")


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Small random base checkpoints (config, safetensors, tokenizer) of each architecture,
    built locally: nothing is downloaded."""
    from tasks.scaffold import ARCHITECTURES, scaffold

    root = tmp_path_factory.mktemp("checkpoints")
    return {arch: scaffold(arch, root / arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto's server) on loopback for the whole session; yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch: pytest.MonkeyPatch):
    """An fsspec S3 filesystem on the loopback server, with the environment every S3 client
    of the project (s3fs, in stages and subprocesses) reads."""
    import fsspec

    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_server}.items():
        monkeypatch.setenv(key, value)
    return fsspec.filesystem("s3", skip_instance_cache=True)


def upload(fs, folder: Path, uri: str) -> str:
    """Copy a local folder's files under an s3:// prefix."""
    bucket = uri.removeprefix("s3://").split("/")[0]
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    for path in folder.rglob("*"):
        if path.is_file():
            fs.put_file(str(path), f"{uri.rstrip('/')}/{path.relative_to(folder)}")
    return uri


def embedded_pngs(page: str) -> dict[str, bytes]:
    """The images of a report page by chart name; every one must be an embedded PNG, so the
    page stands alone wherever it is opened."""
    import base64
    import re

    found = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="(\w+) chart">', page)
    assert len(found) == page.count("<img"), "an image that is not an embedded PNG"
    images = {name: base64.b64decode(data) for data, name in found}
    for name, png in images.items():
        assert png[:8] == b"\x89PNG\r\n\x1a\n", name
    return images


@pytest.fixture(scope="session")
def tiny_lm():
    """A tiny GPT-2 with a character tokenizer, its context 48 tokens: its cached and its
    recompute-only forms, and the loaded model serving asks for."""
    from types import SimpleNamespace

    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from tasks.lm.artifact import LogitsOf, TorchLM
    from tasks.lm.model import TextModel
    from tasks.lm.template import prepare_tokenizer, stop_ids

    vocab = {ch: i for i, ch in enumerate(["<|endoftext|>", *"abcdefghijklmnopqrstuvwxyz :?<>|"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>")
    prepare_tokenizer(tokenizer)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=48, n_embd=32,
                                       n_layer=2, n_head=2, eos_token_id=0)).eval()
    cached = TorchLM(LogitsOf(model), 48)
    plain = SimpleNamespace(logits=cached.logits, n_positions=48)  # no cache to use
    assert cached.incremental is model and getattr(plain, "incremental", None) is None
    return SimpleNamespace(tokenizer=tokenizer, cached=cached, plain=plain,
                           stop=stop_ids(tokenizer),
                           model=TextModel(cached, tokenizer, stop_ids(tokenizer)))
