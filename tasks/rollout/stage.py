"""Canary: roll the evaluated challenger out in traffic steps against the champion; the
promote stage then moves `champion` only if every step passed."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import secrets
from collections.abc import Iterator
from typing import Any

import pandas as pd

from tasks.config import LifecycleConfig
from tasks.errors import BadInput
from tasks.rollout.controller import CanaryOutcome, ServerTarget, StepRecord, run_canary
from tasks.rollout.observe import MetricsSource, PrometheusMetrics, ServerMetrics
from tasks.rollout.policy import CanaryPolicy
from tasks.stage import StageContext, write_json
from tasks.tracking import stage_run

log = logging.getLogger(__name__)
RECORD_TAG = "aigc.canary"
TAG_LIMIT = 5000  # MLflow's limit on a model version tag value


def policy_of(cfg: LifecycleConfig) -> CanaryPolicy:
    return CanaryPolicy(steps=cfg.canary_steps, min_requests=cfg.canary_min_requests,
                        max_holds=cfg.canary_max_holds,
                        # P99 of fewer samples than an advance needs is no evidence either.
                        min_latency_samples=min(20, cfg.canary_min_requests),
                        max_error_rate_increase=cfg.canary_max_error_rate_increase,
                        max_p99_ratio=cfg.canary_max_p99_ratio,
                        min_feedback=cfg.canary_min_feedback, alpha=cfg.canary_alpha)


def skip_reason(cfg: LifecycleConfig, evaluated: dict[str, Any]) -> str | None:
    if not cfg.canary_steps:
        return "canary disabled (canary_steps is empty)"
    if not evaluated["decision"]["promote"]:
        return "offline evaluation rejected the challenger"
    if evaluated["champion_version"] is None:
        return "no champion yet: nothing to compare against"
    return None


def compact_record(outcome: CanaryOutcome) -> str:
    """The outcome as one tag value (one write, so a reader sees all of it or none);
    per-step reasons are dropped first when it would not fit."""
    full = outcome.to_dict()
    text = json.dumps(full, separators=(",", ":"))
    if len(text) <= TAG_LIMIT:
        return text
    brief = full | {"steps": [{k: s[k] for k in ("step", "weight", "action", "champion",
                                                   "challenger")} for s in full["steps"]]}
    return json.dumps(brief, separators=(",", ":"))[:TAG_LIMIT]


def server_admin_key(url: str) -> str:
    """The admin key that steers the long-running server at `url`; bad input without it."""
    key = os.environ.get("AIGC_ADMIN_KEY")
    if not key:
        raise BadInput(f"AIGC_ADMIN_KEY: needed to steer the model server at {url} (set it, or "
                       "the password of the Airflow Connection aigc_model_server)")
    return key


@contextlib.contextmanager
def local_target(ctx: StageContext, model_name: str, prompts: list[str],
                 ) -> Iterator[tuple[str, str]]:
    """(server url, admin key): the server named by AIGC_SERVER_URL, else one started here
    for this stage with throwaway keys, under synthetic load when asked. A named server that
    does not answer fails the stage (retried): rolling out on a stand-in would be a lie."""
    from serving.local import is_alive, local_server
    from tasks.rollout.traffic import TrafficGenerator

    url = os.environ.get("AIGC_SERVER_URL")
    cfg = ctx.config
    if url:
        admin_key, api_key = server_admin_key(url), os.environ.get("AIGC_API_KEY")
        synthetic = cfg.canary_traffic == "synthetic"
        if synthetic and not api_key:
            raise BadInput("AIGC_API_KEY: synthetic canary traffic needs a client key")
        if not is_alive(url):
            raise RuntimeError(f"AIGC_SERVER_URL: no model server answers at {url}/healthz")
        server = contextlib.nullcontext(None)
    else:
        admin_key, api_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        server = local_server(ctx.settings.to_env() | {
            "AIGC_MODEL_NAME": model_name, "AIGC_ADMIN_KEY": admin_key,
            "AIGC_API_KEYS": api_key, "AIGC_RELOAD_INTERVAL_S": "1"},
            ctx.stage_dir / "server.log")
        synthetic = cfg.canary_traffic != "real"
    with server as started:
        url = started.url if started else url
        traffic = (TrafficGenerator(url, api_key, prompts, concurrency=cfg.canary_concurrency,
                                    seed=cfg.seed).start() if synthetic else None)
        try:
            yield url, admin_key
        finally:
            if traffic is not None:
                log.info("synthetic traffic: %s", traffic.stop())


def _check_served(target: ServerTarget, champion: str, challenger: str) -> None:
    state = target.reload()
    if (state["champion"], state["challenger"]) != (champion, challenger):
        raise RuntimeError(f"the server serves champion {state['champion']} and challenger "
                           f"{state['challenger']}, not {champion} and {challenger}: an alias "
                           "moved since evaluation")


def kserve_target() -> Any:
    """The InferenceService named by AIGC_KSERVE_NAMESPACE / AIGC_KSERVE_SERVICE, reached
    with the in-cluster or kubeconfig credentials."""
    from kubernetes import client, config

    from tasks.rollout.kserve import KServeTarget

    config.load_config()
    return KServeTarget(client.CustomObjectsApi(),
                        namespace=os.environ.get("AIGC_KSERVE_NAMESPACE", "default"),
                        name=os.environ.get("AIGC_KSERVE_SERVICE", "aigc-model"))


def metrics_source(server_url: str | None, admin_key: str | None = None) -> MetricsSource:
    """Prometheus when configured (every replica summed), else the one server's /metrics
    and its latency sample."""
    prometheus = os.environ.get("AIGC_PROMETHEUS_URL")
    if prometheus:
        return PrometheusMetrics(prometheus, os.environ.get("AIGC_PROMETHEUS_SELECTOR", ""))
    if server_url is None:
        raise BadInput("AIGC_PROMETHEUS_URL: the kubernetes canary reads its metrics there")
    return ServerMetrics(server_url, admin_key)


def _kserve(version: str) -> tuple[Any, MetricsSource]:
    source = metrics_source(None)
    target = kserve_target()
    # A new revision serving the challenger, with no traffic until the first step.
    target.start(version, 0)
    return target, source


def _log_step(run_: Any) -> Any:
    """MLflow metrics per analysis: the canary timeline, one step index per analysis."""
    count = itertools.count()

    def log_step(record: StepRecord) -> None:
        metrics = {"canary.weight": float(record.weight)}
        for side in ("champion", "challenger"):
            obs = getattr(record, side)
            metrics |= {f"canary.{side}.{k}": float(obs[k]) for k in (
                "requests", "errors", "p99_ms", "feedback_total", "feedback_positive")}
        run_.log_metrics(metrics, step=next(count))
    return log_step


def run(ctx: StageContext) -> dict[str, Any]:
    import mlflow

    ev = ctx.input("evaluate")
    name, version, champion = ev["model_name"], ev["challenger_version"], ev["champion_version"]
    reason = skip_reason(ctx.config, ev)
    if reason:
        log.info("canary skipped: %s", reason)
        with stage_run(ctx) as run_:
            run_.set_tags({"aigc.canary.decision": "skipped", "aigc.canary.reason": reason})
        return {"ran": False, "reason": reason, "model_name": name, "version": version}
    policy = policy_of(ctx.config)
    prompts = pd.read_parquet(ctx.input("preprocess")["splits"]["test"])["prompt"].tolist()
    with stage_run(ctx) as run_:
        if ctx.config.compute_target == "kubernetes":
            target, source = _kserve(version)
            outcome = run_canary(target=target, source=source, champion=champion,
                                 challenger=version, policy=policy,
                                 interval_s=ctx.config.canary_interval_s,
                                 on_step=_log_step(run_))
            where = {"kind": "kserve"}
        else:
            with local_target(ctx, name, prompts) as (url, admin_key):
                target = ServerTarget(url, admin_key)
                _check_served(target, champion, version)
                outcome = run_canary(target=target, source=metrics_source(url, admin_key),
                                     champion=champion, challenger=version, policy=policy,
                                     interval_s=ctx.config.canary_interval_s,
                                     on_step=_log_step(run_))
            # A server this stage started is gone now; a long-running one must follow the
            # promotion, so the promote stage is told where it is.
            where = {"kind": "server", "url": os.environ.get("AIGC_SERVER_URL")}
        record = outcome.to_dict()
        write_json(ctx.stage_dir / "canary.json", record)
        run_.log_artifact(ctx.stage_dir / "canary.json")
        mlflow.MlflowClient().set_model_version_tag(name, version, RECORD_TAG,
                                                    compact_record(outcome))
        run_.set_tags({"aigc.canary.decision": outcome.action.value})
    log.info("canary of version %s: %s after %d analyses", version, outcome.action.value,
             len(outcome.steps))
    return {"ran": True, "decision": outcome.action.value, "model_name": name,
            "version": version, "champion_version": champion, "steps": len(outcome.steps),
            "history": [f"{s.action} at {s.weight}%: " + "; ".join(s.reasons)
                        for s in outcome.steps], "target": where}
