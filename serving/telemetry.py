"""Prometheus metrics of one server, in its own registry (what /metrics exports)."""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

# Fine enough below 100 ms for a small model, wide enough for long generations.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5,
                   2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DIVERSITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class LatencySample:
    """The latest per-request latencies of the last few versions served, numbered so that a
    reader takes only those after its previous read: the canary's rank test compares them
    (the histogram only says which bucket each fell in)."""

    def __init__(self, per_version: int = 10_000, versions: int = 4) -> None:
        self._numbers = itertools.count()
        self._per_version, self._versions = per_version, versions
        self._latest: OrderedDict[str, deque[tuple[int, float]]] = OrderedDict()

    def add(self, version: str, seconds: float) -> None:
        ring = self._latest.get(version)
        if ring is None:
            ring = self._latest[version] = deque(maxlen=self._per_version)
            while len(self._latest) > self._versions:  # retired versions do not pile up
                self._latest.popitem(last=False)
        self._latest.move_to_end(version)
        ring.append((next(self._numbers), seconds))

    def export(self) -> dict[str, list[tuple[int, float]]]:
        return {version: list(ring) for version, ring in self._latest.items()}


class Telemetry:
    def __init__(self) -> None:
        self.samples = LatencySample()
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, fds
        self.requests = Counter("aigc_requests", "Generate requests served, by model version "
                                "and route (champion or challenger).", ["version", "route"],
                                registry=r)
        self.errors = Counter("aigc_request_errors", "Generate requests that failed in the "
                              "model, by model version.", ["version", "route"], registry=r)
        self.latency = Histogram("aigc_request_latency_seconds", "Generate latency (queueing, "
                                 "batching and generation) by model version.", ["version"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("aigc_batch_size", "Sequences decoded together in each "
                                    "step of a version's running batch.", ["version"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.active = Gauge("aigc_active_sequences", "Sequences in a version's running batch "
                            "at its last step.", ["version"], registry=r)
        self.first_token = Histogram("aigc_time_to_first_token_seconds", "From the request "
                                     "to its first generated token, by model version.",
                                     ["version"], buckets=LATENCY_BUCKETS, registry=r)
        self.cancelled = Counter("aigc_cancelled_requests", "Generations the client left "
                                 "before the end (their slot is freed at the next step).",
                                 ["version"], registry=r)
        self.tokens = Counter("aigc_generated_tokens", "New tokens generated (rate() gives "
                              "tokens per second).", ["version"], registry=r)
        self.cache = Counter("aigc_cache_lookups", "Response cache lookups of deterministic "
                             "requests, by result: local, redis or miss.", ["result"], registry=r)
        self.feedback = Counter("aigc_feedback", "Feedback received, by model version and "
                                "sentiment (positive or negative).", ["version", "sentiment"],
                                registry=r)
        self.diversity = Histogram("aigc_response_diversity", "Distinct-1 of each generated "
                                   "response (unique words or CJK characters over all): a "
                                   "repetition signal for quality alerts.", ["version"],
                                   buckets=DIVERSITY_BUCKETS, registry=r)
        self.rejected = Counter("aigc_rejected_requests", "Requests refused before the model: "
                                "bad input or authentication, by HTTP status.", ["status"],
                                registry=r)
        self.canary_weight = Gauge("aigc_canary_weight_percent", "Challenger traffic percent.",
                                   registry=r)
        self.serving = Gauge("aigc_model_serving", "1 for each (alias, version) being served.",
                             ["alias", "version"], registry=r)
        self.load_failures = Counter("aigc_model_load_failures", "Model versions that failed to "
                                     "load, by alias.", ["alias"], registry=r)
        self.rate_limited = Counter("aigc_rate_limited_requests", "Requests refused with 429, "
                                    "by key id and limit (requests_per_s or tokens_per_min).",
                                    ["key_id", "limit"], registry=r)
        self.rate_limit = Gauge("aigc_rate_limit", "Configured limits (0: none), by key id "
                                "('default' for keys not named) and limit.",
                                ["key_id", "limit"], registry=r)
        self.redis_open = Gauge("aigc_redis_circuit_open", "1 while Redis is skipped after "
                                "repeated failures (cache misses, local limits, jobs 503).",
                                registry=r)
        self.jobs_queued = Gauge("aigc_jobs_queued", "Async generation jobs waiting.",
                                 registry=r)
