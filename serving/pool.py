"""The models being served, by MLflow alias: a moved alias is picked up without a restart."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from serving.engine import ContinuousEngine, Engine, RequestEngine
from serving.settings import ServerSettings
from tasks.lm import GenerativeModel
from tasks.registry.register import CHALLENGER, CHAMPION, alias_version

log = logging.getLogger(__name__)
MAX_RETRY_S = 300.0  # the longest pause before a failed version is tried again


@dataclass
class LoadedModel:
    version: str
    run_id: str | None
    model: GenerativeModel
    engine: Engine = field(repr=False)


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
    def __init__(self, settings: ServerSettings,
                 on_step: Callable[[str, int], None] = lambda version, rows: None,
                 on_load_error: Callable[[str], None] = lambda alias: None) -> None:
        self.settings = settings
        self.on_step = on_step
        self.on_load_error = on_load_error
        self.state = Serving()
        self._lock = threading.Lock()  # guards state changes (brief)
        self._loading = threading.Lock()  # one refresh at a time (may take long)
        self._failed: dict[str, tuple[int, float, str]] = {}  # version: failures, retry, why
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _load(self, version: str) -> LoadedModel:
        import mlflow

        from tasks.lm.model import load
        from tasks.registry.model import model_dir_of

        mv = mlflow.MlflowClient().get_model_version(self.settings.model_name, version)
        model = load(model_dir_of(f"models:/{self.settings.model_name}/{version}"))
        log.info("loaded %s version %s", self.settings.model_name, version)
        return LoadedModel(version, mv.run_id, model, self._engine(model, version))

    def _engine(self, model: GenerativeModel, version: str) -> Engine:
        """One inference thread per version, so a slow challenger never queues the
        champion's requests behind its own."""
        s = self.settings
        on_step = lambda rows: self.on_step(version, rows)  # noqa: E731
        if s.batching == "continuous":
            return ContinuousEngine(model, max_rows=s.max_batch, name=f"v{version}",
                                    on_step=on_step)
        return RequestEngine(model, max_rows=s.max_batch if s.batching == "request" else 1,
                             max_wait_s=s.max_wait_ms / 1000, name=f"v{version}",
                             on_step=on_step)

    def _resolve(self) -> dict[str, str | None]:
        import mlflow

        if self.settings.serve_version:
            return {CHAMPION: self.settings.serve_version, CHALLENGER: None}
        client = mlflow.MlflowClient()
        return {alias: alias_version(client, self.settings.model_name, alias)
                for alias in (CHAMPION, CHALLENGER)}

    def refresh(self, force: bool = False) -> Serving:
        """Follow the aliases; load what moved. A challenger equal to the champion is no
        canary, and a new challenger starts at weight 0 until the controller raises it.

        Loading holds only the load lock: reading the state and setting the weight never
        wait for a model to load. A version that failed to load is tried again after a
        growing pause (up to MAX_RETRY_S), or at once when `force`d (an admin reload)."""
        with self._loading:
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
                    error = self._try_load(version, alias, loaded, force)
                    if error:
                        errors.append(f"{alias} version {version}: {error}")
                picked[alias] = loaded.get(version)
            # A champion that fails to load leaves the previous one serving.
            champion = picked[CHAMPION] or (current.champion if errors else None)
            challenger = picked[CHALLENGER]
            with self._lock:
                latest = self.state  # the weight may have been set while models loaded
                same = (challenger is not None and latest.challenger is not None
                        and challenger.version == latest.challenger.version)
                self.state = Serving(champion=champion, challenger=challenger,
                                     weight=latest.weight if same else 0, errors=tuple(errors))
            kept = {m.version for m in (champion, challenger) if m}
            for model in {id(m): m for m in loaded.values()}.values():
                if model.version not in kept:
                    model.engine.retire()
            return self.state

    def _try_load(self, version: str, alias: str, loaded: dict[str, LoadedModel],
                  force: bool) -> str | None:
        """Load a version into `loaded`; the error when it fails or is still pausing."""
        failures, retry_at, error = self._failed.get(version, (0, 0.0, ""))
        wait = retry_at - time.monotonic()
        if wait > 0 and not force:
            return f"{error} (next try in {wait:.0f}s)"
        try:
            loaded[version] = self._load(version)
        except Exception as exc:  # noqa: BLE001 - keep serving what works
            log.exception("cannot load %s version %s", alias, version)
            self.on_load_error(alias)
            pause = min(self.settings.reload_interval_s * 2 ** failures, MAX_RETRY_S)
            self._failed[version] = (failures + 1, time.monotonic() + pause, str(exc))
            return str(exc)
        self._failed.pop(version, None)
        return None

    def set_weight(self, version: str, weight: int) -> Serving:
        with self._lock:
            challenger = self.state.challenger
            if challenger is None or challenger.version != version:
                served = challenger.version if challenger else "none"
                raise LookupError(f"version: {version} is not the served challenger ({served})")
            self.state = Serving(self.state.champion, challenger, weight, self.state.errors)
            return self.state

    def pinned(self, name: str) -> tuple[str, LoadedModel]:
        """A request that names an alias (champion, challenger) or a served version."""
        state = self.state
        for alias, model in ((CHAMPION, state.champion), (CHALLENGER, state.challenger)):
            if model is not None and name in (alias, model.version):
                return alias, model
        raise LookupError(f"{name} is not served here")

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
