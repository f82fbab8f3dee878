"""Server settings from the environment: keys, limits, batching, cache and stores."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from serving.limits import Limit, parse_limits
from tasks.errors import BadInput
from tasks.feedback.identity import user_hash_key
from tasks.settings import Settings

# continuous: iteration-level (the default); request: whole requests batched; none: one by one
BATCHING_MODES = ("continuous", "request", "none")


def _keys(value: str | None) -> frozenset[str]:
    return frozenset(k.strip() for k in (value or "").split(",") if k.strip())


def _number(env: dict[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name)
    try:
        value = float(raw) if raw is not None else default
    except ValueError:
        raise BadInput(f"{name}: {raw!r} is not a number") from None
    if not low <= value <= high:
        raise BadInput(f"{name}: {value} is outside [{low}, {high}]")
    return value


@dataclass(frozen=True)
class ServerSettings:
    """How one server process runs. Keys come from the environment (which a Kubernetes
    Secret or the Airflow Connection `aigc_model_server` fills), never from code."""

    model_name: str
    tracking_uri: str
    api_keys: frozenset[str]
    admin_key: str
    feedback_db: str  # a SQLite path or URL; PostgreSQL URLs when configured
    host: str = "127.0.0.1"
    port: int = 8000
    serve_version: str | None = None  # pin one version (KServe splits traffic itself)
    batching: str = "continuous"
    max_batch: int = 32  # sequences decoding together per version
    max_wait_ms: float = 5.0  # request-level batching only
    cache_size: int = 1024
    cache_ttl_s: int = 3600
    redis_url: str | None = None
    job_workers: int = 1
    max_prompt_chars: int = 2000
    max_body_bytes: int = 1 << 20
    max_feedback_per_request: int = 10  # one verdict per request counts in a rollout
    max_new_tokens: int = 256
    reload_interval_s: float = 5.0
    drain_timeout_s: float = 25.0  # below Kubernetes' default 30 s grace period
    # An idle connection is closed after this long; a client reusing it just then sees a
    # reset. Longer than load balancers' idle timeouts (60 s), as nginx's 75 s default is.
    keep_alive_s: float = 75.0
    log_format: str = "json"  # or "text"
    log_prompts: bool = False  # masked prompts and responses in the access lines
    user_hash_key: bytes = b""  # stored user ids are keyed hashes (tasks.feedback.identity)
    limit: Limit = Limit()  # per key unless key_limits names it
    key_limits: dict[str, Limit] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.api_keys:
            raise BadInput("AIGC_API_KEYS: no client API key configured")
        if not self.admin_key:
            raise BadInput("AIGC_ADMIN_KEY: no admin key configured")
        if self.batching not in BATCHING_MODES:
            raise BadInput(f"AIGC_BATCHING: {self.batching!r} is not one of {BATCHING_MODES}")
        if self.log_format not in ("json", "text"):
            raise BadInput(f"AIGC_LOG_FORMAT: {self.log_format!r} is not json or text")
        if self.admin_key in self.api_keys:
            raise BadInput("AIGC_ADMIN_KEY: must differ from every client key")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServerSettings:
        env = dict(os.environ if env is None else env)
        base = Settings.from_env()
        limit, key_limits = parse_limits(Limit(
            _number(env, "AIGC_RATE_REQUESTS_PER_S", 0, 0, 1e6),
            _number(env, "AIGC_RATE_TOKENS_PER_MIN", 0, 0, 1e12),
            _number(env, "AIGC_RATE_FEEDBACK_PER_MIN", 0, 0, 1e9)), env.get("AIGC_KEY_LIMITS"))
        return cls(
            model_name=env.get("AIGC_MODEL_NAME", "aigc-gpt2"),
            tracking_uri=env.get("MLFLOW_TRACKING_URI", base.tracking_uri),
            api_keys=_keys(env.get("AIGC_API_KEYS")),
            # A Secret file's trailing newline must not lock the admin out.
            admin_key=env.get("AIGC_ADMIN_KEY", "").strip(),
            feedback_db=env.get("AIGC_FEEDBACK_DB", base.feedback_db),
            host=env.get("AIGC_SERVER_HOST", "127.0.0.1"),
            port=int(_number(env, "AIGC_SERVER_PORT", 8000, 0, 65535)),
            serve_version=env.get("AIGC_SERVE_VERSION") or None,
            batching=env.get("AIGC_BATCHING", "continuous"),
            max_batch=int(_number(env, "AIGC_MAX_BATCH", 32, 1, 256)),
            max_wait_ms=_number(env, "AIGC_MAX_WAIT_MS", 5.0, 0, 1000),
            cache_size=int(_number(env, "AIGC_CACHE_SIZE", 1024, 0, 10_000_000)),
            cache_ttl_s=int(_number(env, "AIGC_CACHE_TTL_S", 3600, 1, 30 * 86400)),
            redis_url=env.get("AIGC_REDIS_URL") or None,
            job_workers=int(_number(env, "AIGC_JOB_WORKERS", 1, 1, 64)),
            max_prompt_chars=int(_number(env, "AIGC_MAX_PROMPT_CHARS", 2000, 1, 1_000_000)),
            max_body_bytes=int(_number(env, "AIGC_MAX_BODY_BYTES", 1 << 20, 1024, 1 << 30)),
            max_feedback_per_request=int(_number(env, "AIGC_MAX_FEEDBACK_PER_REQUEST", 10, 1,
                                                 1_000_000)),
            max_new_tokens=int(_number(env, "AIGC_MAX_NEW_TOKENS", 256, 1, 8192)),
            reload_interval_s=_number(env, "AIGC_RELOAD_INTERVAL_S", 5.0, 0.1, 3600),
            drain_timeout_s=_number(env, "AIGC_DRAIN_TIMEOUT_S", 25.0, 0, 3600),
            keep_alive_s=_number(env, "AIGC_KEEP_ALIVE_S", 75.0, 1, 3600),
            log_format=env.get("AIGC_LOG_FORMAT", "json"),
            log_prompts=env.get("AIGC_LOG_PROMPTS", "0") == "1",
            user_hash_key=user_hash_key(env), limit=limit, key_limits=key_limits,
        )
