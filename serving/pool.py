"""The models being served, by MLflow alias: a moved alias is picked up without a restart."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from serving.batching import Batcher
from serving.settings import ServerSettings
from tasks.lm import GenerativeModel
from tasks.lm.generate import Generated, Sampling
from tasks.registry.register import CHALLENGER, CHAMPION, alias_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenItem:
    prompt: str
    sampling: Sampling
    seed: int


@dataclass
class LoadedModel:
    version: str
    run_id: str | None
    model: GenerativeModel
    batcher: Batcher[GenItem, Generated] = field(repr=False)
    executor: ThreadPoolExecutor = field(repr=False)

    def retire(self, grace_s: float = 30.0) -> None:
        """Stop this version's inference thread once requests already routed to it are done."""
        timer = threading.Timer(grace_s, self.executor.shutdown)
        timer.daemon = True
        timer.start()

    def generate(self, items: Sequence[GenItem]) -> list[Generated]:
        return self.model.generate_rows([i.prompt for i in items], [i.sampling for i in items],
                                        [torch.Generator().manual_seed(i.seed) for i in items])


@dataclass(frozen=True)
class Serving:
    """One consistent view: the champion, the challenger and its traffic weight (percent)."""

    champion: LoadedModel | None = None
    challenger: LoadedModel | None = None
    weight: int = 0
    errors: tuple[str, ...] = ()


def in_canary(weight: int, sticky_key: str | None, draw: float) -> bool:
    """Whether a request goes to the challenger.

    With a user or session id the choice is a fixed hash bucket, so a user keeps one
    version and, as the weight grows, users only ever move onto the challenger."""
    if weight <= 0:
        return False
    if sticky_key:
        bucket = int.from_bytes(hashlib.sha256(sticky_key.encode()).digest()[:8], "big")
        return bucket % 10_000 < weight * 100
    return draw * 100 < weight


class ModelPool:
    def __init__(self, settings: ServerSettings, on_batch=lambda v, n: None,
                 on_load_error=lambda alias: None) -> None:
        self.settings = settings
        self.on_batch = on_batch
        self.on_load_error = on_load_error
        self.state = Serving()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _load(self, version: str) -> LoadedModel:
        import mlflow

        from tasks.lm.model import load
        from tasks.registry.model import model_dir_of

        mv = mlflow.MlflowClient().get_model_version(self.settings.model_name, version)
        model = load(model_dir_of(f"models:/{self.settings.model_name}/{version}"))
        # One inference thread per version: batches of one version run in order, and a slow
        # challenger does not queue the champion's requests behind its own.
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"infer-v{version}")
        batcher: Batcher[GenItem, Generated] = Batcher(
            lambda items: loaded.generate(items), max_batch=self.settings.max_batch,
            max_wait_s=self.settings.max_wait_ms / 1000, executor=executor,
            on_batch=lambda n: self.on_batch(version, n))
        loaded = LoadedModel(version, mv.run_id, model, batcher, executor)
        log.info("loaded %s version %s", self.settings.model_name, version)
        return loaded

    def _resolve(self) -> dict[str, str | None]:
        import mlflow

        if self.settings.serve_version:
            return {CHAMPION: self.settings.serve_version, CHALLENGER: None}
        client = mlflow.MlflowClient()
        return {alias: alias_version(client, self.settings.model_name, alias)
                for alias in (CHAMPION, CHALLENGER)}

    def refresh(self) -> Serving:
        """Follow the aliases; load what moved. A challenger equal to the champion is no
        canary, and a new challenger starts at weight 0 until the controller raises it."""
        with self._lock:
            current = self.state
            wanted = self._resolve()
            loaded = {m.version: m for m in (current.champion, current.challenger) if m}
            errors = []
            picked: dict[str, LoadedModel | None] = {}
            for alias, version in wanted.items():
                if version is None or (alias == CHALLENGER and version == wanted[CHAMPION]):
                    picked[alias] = None
                    continue
                if version not in loaded:
                    try:
                        loaded[version] = self._load(version)
                    except Exception as exc:  # noqa: BLE001 - keep serving what works
                        log.exception("cannot load %s version %s", alias, version)
                        self.on_load_error(alias)
                        errors.append(f"{alias} version {version}: {exc}")
                picked[alias] = loaded.get(version)
            # A champion that fails to load leaves the previous one serving.
            champion = picked[CHAMPION] or (current.champion if errors else None)
            challenger = picked[CHALLENGER]
            kept = {m.version for m in (champion, challenger) if m}
            for model in (current.champion, current.challenger):
                if model is not None and model.version not in kept:
                    model.retire()
            same = (challenger is not None and current.challenger is not None
                    and challenger.version == current.challenger.version)
            self.state = Serving(champion=champion, challenger=challenger,
                                 weight=current.weight if same else 0, errors=tuple(errors))
            return self.state

    def set_weight(self, version: str, weight: int) -> Serving:
        with self._lock:
            challenger = self.state.challenger
            if challenger is None or challenger.version != version:
                served = challenger.version if challenger else "none"
                raise LookupError(f"version: {version} is not the served challenger ({served})")
            self.state = Serving(self.state.champion, challenger, weight, self.state.errors)
            return self.state

    def pick(self, sticky_key: str | None, draw: float) -> tuple[str, LoadedModel]:
        state = self.state  # one read: champion, challenger and weight belong together
        if state.challenger is not None and in_canary(state.weight, sticky_key, draw):
            return CHALLENGER, state.challenger
        if state.champion is None:
            raise LookupError("no champion model is loaded")
        return CHAMPION, state.champion

    def start(self) -> None:
        def poll() -> None:
            while not self._stop.wait(self.settings.reload_interval_s):
                try:
                    self.refresh()
                except Exception:  # noqa: BLE001 - the registry may be briefly unreachable
                    log.exception("alias refresh failed; serving the models already loaded")

        self._thread = threading.Thread(target=poll, name="alias-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
