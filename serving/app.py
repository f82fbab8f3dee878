"""The HTTP API: generate, feedback, async jobs, health, metrics and the canary admin."""

import asyncio
import contextlib
import hmac
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.cache import ResponseCache, cache_key, is_deterministic
from serving.jobs import MemoryJobs, RedisJobs
from serving.pool import GenItem, ModelPool, Serving
from serving.settings import ServerSettings
from serving.telemetry import Telemetry
from tasks.feedback.store import (
    FeedbackConflict,
    FeedbackRecord,
    FeedbackStore,
    RequestRecord,
    UnknownRequest,
)
from tasks.lm.generate import Sampling
from tasks.text import distinct_n

log = logging.getLogger(__name__)
MAX_SEED = 2**31 - 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not a default


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


def generate_request_model(settings: ServerSettings) -> type[Strict]:
    """The generate body, bounded by this server's limits."""

    class GenerateRequest(Strict):
        prompt: str = Field(min_length=1, max_length=settings.max_prompt_chars)
        max_new_tokens: int = Field(32, ge=1, le=settings.max_new_tokens)
        temperature: float = Field(0.8, ge=0, le=2, description="0 = greedy")
        top_p: float = Field(0.95, gt=0, le=1)
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


def _bearer(authorization: str | None, api_key: str | None) -> str:
    if api_key:
        return api_key
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "missing API key: send 'Authorization: Bearer <key>' or "
                            "'X-API-Key: <key>'", headers={"WWW-Authenticate": "Bearer"})
    return token.strip()


def _matches(key: str, allowed: frozenset[str] | tuple[str, ...]) -> bool:
    # Compare with every key in constant time: no timing hint about which prefix matched.
    return any([hmac.compare_digest(key.encode(), k.encode()) for k in allowed])


def create_app(settings: ServerSettings) -> FastAPI:
    telemetry = Telemetry()
    pool = ModelPool(settings,
                     on_batch=lambda v, n: telemetry.batch_size.labels(v).observe(n),
                     on_load_error=lambda a: telemetry.load_failures.labels(a).inc())
    cache = ResponseCache(settings.cache_size, settings.redis_url, settings.cache_ttl_s)
    store = FeedbackStore(settings.feedback_db)
    jobs = RedisJobs(settings.redis_url) if settings.redis_url else MemoryJobs()
    GenerateRequest = generate_request_model(settings)  # noqa: N806 - a class

    def client(authorization: Annotated[str | None, Header()] = None,
               x_api_key: Annotated[str | None, Header()] = None) -> str:
        key = _bearer(authorization, x_api_key)
        if not _matches(key, settings.api_keys):
            raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
        return key

    def admin(authorization: Annotated[str | None, Header()] = None,
              x_api_key: Annotated[str | None, Header()] = None) -> None:
        key = _bearer(authorization, x_api_key)
        if not _matches(key, (settings.admin_key,)):
            raise HTTPException(403, "this endpoint needs the admin key")

    async def serve(body: Any, sticky: str | None) -> tuple[dict[str, Any], dict[str, str]]:
        """Route, answer from the cache or the model, record; (body, headers)."""
        request_id = uuid.uuid4().hex
        try:
            route, model = pool.pick(sticky, random.random())
        except LookupError as exc:
            raise HTTPException(503, str(exc)) from None
        params = {"max_new_tokens": body.max_new_tokens, "temperature": body.temperature,
                  "top_p": body.top_p, "seed": body.seed}
        headers = {"X-Request-Id": request_id, "X-Model-Version": model.version}
        started = time.perf_counter()
        key = (cache_key(model.version, body.prompt, params)
               if is_deterministic(body.temperature, body.seed) else None)
        hit, tier = cache.get(key) if key else (None, None)
        if key:
            telemetry.cache.labels(tier or "miss").inc()
        error = None
        try:
            if hit is None:
                seed = body.seed if body.seed is not None else random.randint(0, MAX_SEED)
                out = await model.batcher.submit(GenItem(
                    body.prompt, Sampling(body.max_new_tokens, body.temperature, body.top_p),
                    seed))
                hit = {"text": out.text, "tokens": out.tokens}
                if key:
                    cache.put(key, hit)
        except Exception as exc:  # noqa: BLE001 - reported to the caller and counted
            log.exception("version %s failed", model.version)
            error = f"{type(exc).__name__}: {exc}"
        latency = time.perf_counter() - started
        telemetry.requests.labels(model.version, route).inc()
        telemetry.latency.labels(model.version).observe(latency)
        if error:
            telemetry.errors.labels(model.version, route).inc()
        elif tier is None:
            telemetry.tokens.labels(model.version).inc(hit["tokens"])
            telemetry.diversity.labels(model.version).observe(distinct_n([hit["text"]], 1))
        await run_in_threadpool(store.log_request, RequestRecord(
            request_id=request_id, model_name=settings.model_name,
            model_version=model.version, route=route, user_id=sticky, prompt=body.prompt,
            response=None if error else hit["text"], params=params,
            tokens=0 if error or tier else hit["tokens"], latency_ms=latency * 1000,
            cached=tier is not None, status="error" if error else "ok", error=error))
        if error:
            raise HTTPException(500, f"model version {model.version} failed: {error}",
                                headers=headers)
        return ({"request_id": request_id, "model_version": model.version, "route": route,
                 "text": hit["text"], "tokens": hit["tokens"], "cached": tier is not None,
                 "latency_ms": round(latency * 1000, 3)}, headers)

    async def run_job(request: dict[str, Any]) -> dict[str, Any]:
        body = GenerateRequest.model_validate(request)
        result, _ = await serve(body, body.user)
        return result

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import mlflow

        mlflow.set_tracking_uri(settings.tracking_uri)
        try:
            await asyncio.to_thread(pool.refresh)
        except Exception:  # noqa: BLE001 - readyz says so; the poller keeps trying
            log.exception("initial model load failed")
        pool.start()
        jobs.start(run_job, settings.job_workers)
        yield
        pool.stop()
        await jobs.close()
        for model in (pool.state.champion, pool.state.challenger):
            if model is not None:
                await model.batcher.close()
                model.executor.shutdown(wait=False, cancel_futures=True)
        store.close()

    app = FastAPI(title="AIGC model server", version="0.1.0", lifespan=lifespan,
                  description="Champion/challenger serving with weighted canary routing, "
                  "dynamic batching, a response cache and feedback capture.")
    app.state.pool, app.state.store, app.state.telemetry = pool, store, telemetry

    @app.exception_handler(RequestValidationError)
    async def rejected(request: Request, exc: RequestValidationError) -> Response:
        telemetry.rejected.labels("422").inc()
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code in (401, 403, 404, 409):
            telemetry.rejected.labels(str(exc.status_code)).inc()
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    @app.post("/v1/generate", summary="Generate a reply (routed champion/challenger)")
    async def generate(body: GenerateRequest, _: Annotated[str, Depends(client)],
                       x_session_id: Annotated[str | None, Header(max_length=128)] = None,
                       ) -> JSONResponse:
        result, headers = await serve(body, body.user or x_session_id)
        return JSONResponse(result, headers=headers)

    @app.post("/v1/feedback", status_code=201, summary="Rate a served response")
    async def feedback(body: FeedbackRequest, _: Annotated[str, Depends(client)],
                       ) -> JSONResponse:
        record = FeedbackRecord(feedback_id=body.feedback_id or uuid.uuid4().hex,
                                request_id=body.request_id, rating=body.rating,
                                thumbs=body.thumbs, comment=body.comment)
        try:
            row, created = await run_in_threadpool(store.add_feedback, record)
        except UnknownRequest:
            raise HTTPException(404, f"request_id: {body.request_id} was not served here"
                                ) from None
        except FeedbackConflict as exc:
            raise HTTPException(409, str(exc)) from None
        if created:
            telemetry.feedback.labels(row["model_version"],
                                      "positive" if record.positive else "negative").inc()
        return JSONResponse({"feedback_id": row["feedback_id"], "request_id": row["request_id"],
                             "model_version": row["model_version"], "created": created},
                            status_code=201 if created else 200)

    @app.post("/v1/jobs", status_code=202, summary="Queue a long generation")
    async def submit_job(body: GenerateRequest, _: Annotated[str, Depends(client)],
                         ) -> dict[str, str]:
        job_id = await jobs.submit(body.model_dump())
        return {"job_id": job_id, "status": "queued", "status_url": f"/v1/jobs/{job_id}"}

    @app.get("/v1/jobs/{job_id}", summary="A job's status and, when done, its result")
    async def get_job(job_id: str, _: Annotated[str, Depends(client)]) -> dict[str, Any]:
        job = await jobs.get(job_id)
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
        telemetry.jobs_queued.set(await jobs.depth())
        return Response(generate_latest(telemetry.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/admin/canary", summary="Served versions and the challenger weight")
    async def get_canary(_: Annotated[None, Depends(admin)]) -> dict[str, Any]:
        return canary_state()

    @app.put("/admin/canary", summary="Set the challenger's traffic percent")
    async def put_canary(body: CanaryWeight, _: Annotated[None, Depends(admin)],
                         ) -> dict[str, Any]:
        try:
            pool.set_weight(body.version, body.weight)
        except LookupError as exc:
            raise HTTPException(409, str(exc)) from None
        log.info("challenger %s weight %d%%", body.version, body.weight)
        return canary_state()

    @app.post("/admin/reload", summary="Follow the MLflow aliases now")
    async def reload(_: Annotated[None, Depends(admin)]) -> dict[str, Any]:
        await asyncio.to_thread(pool.refresh)
        return canary_state()

    return app
