"""What the server tells operators: JSON log lines (one access line per request, and event
lines) that Filebeat or Logstash read as they are, and an OpenTelemetry span per request
when an OTLP endpoint is configured.

An access line names the request id, the model version and route, the client's key id
(never the key), the status, the latency, the tokens, the cache tier and why the generation
ended. Prompts and responses appear only when `AIGC_LOG_PROMPTS=1`, and then masked.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

ACCESS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "aigc_access", default=None)
QUIET_PATHS = ("/healthz", "/readyz", "/metrics")  # probes: logged only when they fail
access_log = logging.getLogger("aigc.access")
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


def note(**fields: Any) -> None:
    """Add fields to the current request's access line (no-op outside a request)."""
    current = ACCESS.get()
    if current is not None:
        current.update(fields)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        line = {"ts": ts, "level": record.levelname.lower(), "logger": record.name,
                "message": record.getMessage()}
        line |= {k: v for k, v in vars(record).items() if k not in _RESERVED}
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(fmt: str) -> None:
    """Every logger to stderr, as JSON lines or as text; Python warnings as log lines; no
    progress bars (they are not lines)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE"):
        os.environ[var] = "1"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    adopt_library_loggers()


def adopt_library_loggers() -> None:
    """Libraries that attach their own handlers (uvicorn at start, torch when a model
    loads) write through the root's instead, so every line has one format."""
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger) and logger.handlers:
            logger.handlers[:] = []
            logger.propagate = True


def tracer() -> Any:
    """A tracer exporting over OTLP/HTTP when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set;
    None otherwise (no tracing cost at all)."""
    if not (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return None
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME", "aigc-model-server")}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return trace.get_tracer("aigc.serving")


def shutdown_tracing() -> None:
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()  # flush the spans still batched


class AccessLog:
    """ASGI middleware: one access line (and span) per request, written when its response
    has been sent, streamed ones included."""

    def __init__(self, app: Any, tracer: Any = None) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fields: dict[str, Any] = {"method": scope["method"], "path": scope["path"]}
        token = ACCESS.set(fields)
        started = time.perf_counter()

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                fields["status"] = message["status"]
            await send(message)

        span = (self.tracer.start_span(f"{scope['method']} {scope['path']}")
                if self.tracer is not None else None)
        try:
            await self.app(scope, receive, sending)
        finally:
            fields["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
            fields.setdefault("status", 500)
            ACCESS.reset(token)
            self._write(fields, span)

    @staticmethod
    def _write(fields: dict[str, Any], span: Any) -> None:
        if span is not None:
            for key, value in fields.items():
                if value is not None:
                    span.set_attribute(f"aigc.{key}", value)
            span.end()
        if fields["path"] in QUIET_PATHS and fields["status"] < 400:
            return
        access_log.info("%s %s %s", fields["method"], fields["path"], fields["status"],
                        extra=fields)
