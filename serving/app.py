"""The HTTP API: generate, feedback, async jobs, health, metrics and the canary admin."""

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.cache import ResponseCache
from serving.engine import GenItem
from serving.guard import bearer, guarded_route, matches
from serving.jobs import MemoryJobs, RedisJobs
from serving.limits import FEEDBACK, REQUESTS, TOKENS, Limits, RateLimited, key_id, retry_after
from serving.observe import AccessLog, adopt_library_loggers, note, shutdown_tracing, tracer
from serving.openai import error_body
from serving.openai import router as openai_router
from serving.pool import ModelPool, Serving
from serving.redis_tier import RedisTier, RedisUnavailable
from serving.service import MAX_SEED, Service
from serving.settings import ServerSettings
from serving.telemetry import Telemetry
from tasks.feedback.store import (
    FeedbackConflict,
    FeedbackLimit,
    FeedbackRecord,
    FeedbackStore,
    UnknownRequest,
)
from tasks.lm.generate import FINISH_ERROR, Sampling

log = logging.getLogger(__name__)


class Strict(BaseModel):
    # A misspelt field is an error, not a silent default; numbers are numbers, not "8" or true.
    model_config = ConfigDict(extra="forbid", strict=True)


class FeedbackRequest(Strict):
    request_id: str = Field(min_length=1, max_length=64, description="X-Request-Id of the "
                            "generate response being rated")
    rating: int | None = Field(None, ge=1, le=5, description="1 (bad) to 5 (good)")
    thumbs: Literal["up", "down"] | None = None
    comment: str | None = Field(None, max_length=2000)
    feedback_id: str | None = Field(None, min_length=1, max_length=64,
                                    pattern=r"^[A-Za-z0-9_.:-]+$",
                                    description="Idempotency key: a retried post with the "
                                    "same id is stored once")

    @model_validator(mode="after")
    def one_signal(self) -> "FeedbackRequest":
        if (self.rating is None) == (self.thumbs is None):
            raise ValueError("give exactly one of rating or thumbs")
        return self


class CanaryWeight(Strict):
    version: str = Field(min_length=1, max_length=32, description="the challenger version "
                         "this weight is meant for (refused if another is served)")
    weight: int = Field(ge=0, le=100, description="challenger traffic percent")


class ErasureRequest(Strict):
    user: str = Field(min_length=1, max_length=256, description="the user id clients sent "
                      "as `user`; found through the keyed hash stored in its place")


def generate_request_model(settings: ServerSettings) -> type[Strict]:
    """The generate body, bounded by this server's limits."""

    class GenerateRequest(Strict):
        prompt: str = Field(min_length=1, max_length=settings.max_prompt_chars)
        max_new_tokens: int = Field(32, ge=1, le=settings.max_new_tokens)
        temperature: float = Field(0.8, ge=0, le=2, allow_inf_nan=False, description="0 = greedy")
        top_p: float = Field(0.95, gt=0, le=1, allow_inf_nan=False)
        seed: int | None = Field(None, ge=0, le=MAX_SEED, description="fixes the sampling; "
                                 "seeded and greedy requests are cached")
        user: str | None = Field(None, min_length=1, max_length=128, description="user or "
                                 "session id: the same id keeps the same model version")

        @field_validator("prompt")
        @classmethod
        def not_blank(cls, value: str) -> str:
            if not value.strip():
                raise ValueError("prompt is blank")
            return value

    return GenerateRequest


OPENAI_PATHS = ("/v1/completions", "/v1/chat/", "/v1/models")


def _details(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Where and why, without echoing the input (which can be huge, or not encodable)."""
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")),
             "type": str(e.get("type", ""))} for e in exc.errors()]


def create_app(settings: ServerSettings) -> FastAPI:
    telemetry = Telemetry()
    pool = ModelPool(settings,
                     on_step=lambda v, n: telemetry.batch_size.labels(v).observe(n),
                     on_load_error=lambda a: telemetry.load_failures.labels(a).inc())
    redis = (RedisTier(settings.redis_url, on_state=telemetry.redis_open.set)
             if settings.redis_url else None)
    cache = ResponseCache(settings.cache_size, redis, settings.cache_ttl_s)
    store = FeedbackStore(settings.feedback_db)
    jobs = RedisJobs(redis) if redis else MemoryJobs()
    limits = Limits(settings.limit, settings.key_limits, redis)
    for kid, kind, value in limits.described(sorted(settings.key_limits)):
        telemetry.rate_limit.labels(kid, kind).set(value)
    service = Service(settings, pool, cache, store, telemetry, limits)
    GenerateRequest = generate_request_model(settings)  # noqa: N806 - a class
    guarded = guarded_route(lambda: (settings.api_keys, settings.admin_key),
                            settings.max_body_bytes)

    def client(*kinds: str) -> Callable[..., Awaitable[str]]:
        """A dependency: the client's key id, once the key is known and within these of
        its limits."""

        async def check(authorization: Annotated[str | None, Header()] = None,
                        x_api_key: Annotated[str | None, Header()] = None) -> str:
            key = bearer(authorization, x_api_key)
            if key is None or not matches(key, settings.api_keys):
                raise HTTPException(401, "invalid API key",
                                    headers={"WWW-Authenticate": "Bearer"})
            kid = key_id(key)
            note(key_id=kid)
            try:
                await limits.admit(kid, kinds)
            except RateLimited as exc:
                telemetry.rate_limited.labels(kid, exc.kind).inc()
                value = getattr(limits.limit(kid), exc.kind)
                raise HTTPException(429, f"key {kid} is over its limit of {value:g} "
                                    f"{exc.kind}; retry after {exc.retry_after_s:.1f}s",
                                    headers=retry_after(exc.retry_after_s)) from None
            return kid

        return check

    generating, reading, rating = (client(REQUESTS, TOKENS), client(REQUESTS),
                                   client(REQUESTS, FEEDBACK))

    def admin(authorization: Annotated[str | None, Header()] = None,
              x_api_key: Annotated[str | None, Header()] = None) -> None:
        key = bearer(authorization, x_api_key)
        if key is None or not matches(key, (settings.admin_key,)):
            raise HTTPException(403, "this endpoint needs the admin key")

    async def serve(body: Any, sticky: str | None, kid: str | None,
                    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Route, answer from the cache or the model, record; (body, headers)."""
        params = {"max_new_tokens": body.max_new_tokens, "temperature": body.temperature,
                  "top_p": body.top_p, "seed": body.seed}
        seed = body.seed if body.seed is not None else random.randint(0, MAX_SEED)
        item = GenItem(body.prompt, Sampling(body.max_new_tokens, body.temperature,
                                             body.top_p), seed)
        gen = await service.complete(await service.begin(item, params, body.prompt, sticky,
                                                               kid))
        if gen.finish == FINISH_ERROR:
            raise HTTPException(500, f"model version {gen.version} failed: {gen.error}",
                                headers=gen.headers())
        return ({"request_id": gen.request_id, "model_version": gen.version,
                 "route": gen.route, "text": gen.text, "tokens": gen.tokens,
                 "cached": gen.cache_tier is not None,
                 "latency_ms": round((time.perf_counter() - gen.started) * 1000, 3)},
                gen.headers())

    async def run_job(request: dict[str, Any], kid: str | None) -> dict[str, Any]:
        body = GenerateRequest.model_validate(request)
        result, _ = await serve(body, body.user, kid)
        return result

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import mlflow

        mlflow.set_tracking_uri(settings.tracking_uri)
        try:
            await asyncio.to_thread(pool.refresh)
        except Exception:  # noqa: BLE001 - readyz says so; the poller keeps trying
            log.exception("initial model load failed")
        adopt_library_loggers()  # loading a model attached some
        pool.start()
        jobs.start(run_job, settings.job_workers)
        yield
        pool.stop()
        await jobs.close()
        if redis is not None:
            await redis.close()
        if traces is not None:
            shutdown_tracing()
        for model in (pool.state.champion, pool.state.challenger):
            if model is not None:
                model.engine.retire()
        store.close()

    app = FastAPI(title="AIGC model server", version="0.2.0", lifespan=lifespan,
                  description="Champion/challenger serving with weighted canary routing, "
                  "continuous batching, token streaming, an OpenAI-compatible API, a response "
                  "cache and feedback capture.")
    app.state.pool, app.state.store, app.state.telemetry = pool, store, telemetry
    traces = tracer()
    app.add_middleware(AccessLog, tracer=traces)
    keyed = APIRouter(route_class=guarded)

    def openai_path(request: Request) -> bool:
        return request.url.path.startswith(OPENAI_PATHS)

    @app.exception_handler(RequestValidationError)
    async def rejected(request: Request, exc: RequestValidationError) -> Response:
        telemetry.rejected.labels("422").inc()
        details = _details(exc)
        if openai_path(request):
            first = details[0] if details else {"loc": [], "msg": "invalid request"}
            field = ".".join(str(x) for x in first["loc"][1:]) or None
            return JSONResponse(error_body(422, f"{field or 'body'}: {first['msg']}", field),
                                422)
        return JSONResponse({"detail": details}, 422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if 400 <= exc.status_code < 500:
            telemetry.rejected.labels(str(exc.status_code)).inc()
        body = (error_body(exc.status_code, str(exc.detail)) if openai_path(request)
                else {"detail": exc.detail})
        return JSONResponse(body, exc.status_code, headers=exc.headers)

    @keyed.post("/v1/generate", summary="Generate a reply (routed champion/challenger)")
    async def generate(body: GenerateRequest, kid: Annotated[str, Depends(generating)],
                       x_session_id: Annotated[str | None, Header(max_length=128)] = None,
                       ) -> JSONResponse:
        result, headers = await serve(body, body.user or x_session_id, kid)
        return JSONResponse(result, headers=headers)

    @keyed.post("/v1/feedback", status_code=201, summary="Rate a served response")
    async def feedback(body: FeedbackRequest, _: Annotated[str, Depends(rating)],
                       ) -> JSONResponse:
        record = FeedbackRecord(feedback_id=body.feedback_id or uuid.uuid4().hex,
                                request_id=body.request_id, rating=body.rating,
                                thumbs=body.thumbs, comment=body.comment)
        try:
            row, created, first = await run_in_threadpool(
                store.add_feedback, record, settings.max_feedback_per_request)
        except UnknownRequest:
            raise HTTPException(404, f"request_id: {body.request_id} was not served here"
                                ) from None
        except (FeedbackConflict, FeedbackLimit) as exc:
            raise HTTPException(409, str(exc)) from None
        if first:  # one verdict per request: one client cannot sway a rollout by repeating
            telemetry.feedback.labels(row["model_version"],
                                      "positive" if record.positive else "negative").inc()
        return JSONResponse({"feedback_id": row["feedback_id"], "request_id": row["request_id"],
                             "model_version": row["model_version"], "created": created},
                            status_code=201 if created else 200)

    @keyed.post("/v1/jobs", status_code=202, summary="Queue a long generation")
    async def submit_job(body: GenerateRequest, kid: Annotated[str, Depends(generating)],
                         ) -> dict[str, str]:
        try:
            job_id = await jobs.submit(body.model_dump(), kid)
        except RedisUnavailable as exc:
            raise HTTPException(503, f"the job queue is unavailable: {exc}",
                                headers={"Retry-After": "5"}) from None
        return {"job_id": job_id, "status": "queued", "status_url": f"/v1/jobs/{job_id}"}

    @keyed.get("/v1/jobs/{job_id}", summary="A job's status and, when done, its result")
    async def get_job(job_id: str, _: Annotated[str, Depends(reading)]) -> dict[str, Any]:
        try:
            job = await jobs.get(job_id)
        except RedisUnavailable as exc:
            raise HTTPException(503, f"the job queue is unavailable: {exc}",
                                headers={"Retry-After": "5"}) from None
        if job is None:
            raise HTTPException(404, f"job_id: {job_id} is unknown (or expired)")
        return job

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def canary_state(state: Serving | None = None) -> dict[str, Any]:
        """Who serves and at what weight, from one read of the pool's state."""
        state = state or pool.state
        return {"champion": state.champion.version if state.champion else None,
                "challenger": state.challenger.version if state.challenger else None,
                "weight": state.weight if state.challenger else 0,
                "errors": list(state.errors)}

    @app.get("/readyz", summary="Readiness: a champion is loaded")
    async def readyz() -> JSONResponse:
        state = pool.state
        return JSONResponse(canary_state(state), status_code=200 if state.champion else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        state = pool.state
        telemetry.canary_weight.set(canary_state(state)["weight"])
        telemetry.serving.clear()
        for alias, model in (("champion", state.champion), ("challenger", state.challenger)):
            if model is not None:
                telemetry.serving.labels(alias, model.version).set(1)
        for model in (state.champion, state.challenger):
            if model is not None:
                telemetry.active.labels(model.version).set(model.engine.active)
        with contextlib.suppress(RedisUnavailable):  # metrics never wait on Redis
            telemetry.jobs_queued.set(await jobs.depth())
        return Response(generate_latest(telemetry.registry), media_type=CONTENT_TYPE_LATEST)

    @keyed.get("/admin/canary", summary="Served versions and the challenger weight")
    async def get_canary(_: Annotated[None, Depends(admin)]) -> dict[str, Any]:
        return canary_state()

    @keyed.put("/admin/canary", summary="Set the challenger's traffic percent")
    async def put_canary(body: CanaryWeight, _: Annotated[None, Depends(admin)],
                         ) -> dict[str, Any]:
        try:
            pool.set_weight(body.version, body.weight)
        except LookupError as exc:
            raise HTTPException(409, str(exc)) from None
        log.info("challenger %s weight %d%%", body.version, body.weight)
        return canary_state()

    @keyed.get("/admin/latencies", summary="The latest per-request latencies by version")
    async def latencies(_: Annotated[None, Depends(admin)]) -> dict[str, Any]:
        return {"versions": telemetry.samples.export()}

    @keyed.post("/admin/erasure", summary="Erase one user's requests and feedback")
    async def erasure(body: ErasureRequest, _: Annotated[None, Depends(admin)],
                      ) -> dict[str, Any]:
        from tasks.feedback.rights import erase

        done = await asyncio.to_thread(erase, store, body.user, settings.user_hash_key,
                                       settings.tracking_uri)
        log.info("erasure %s: %d requests, %d feedback rows", done["erasure_id"],
                 done["requests_deleted"], done["feedback_deleted"])
        return done

    @keyed.post("/admin/reload", summary="Follow the MLflow aliases now")
    async def reload(_: Annotated[None, Depends(admin)]) -> dict[str, Any]:
        await asyncio.to_thread(pool.refresh, True)
        return canary_state()

    app.include_router(keyed)
    app.include_router(openai_router(service, settings, generating, reading, guarded))
    return app
