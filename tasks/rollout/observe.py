"""Per-version traffic counters from the server's /metrics or from Prometheus, and the
Observation of an interval: the difference of two snapshots. The local server also hands
the controller a bounded sample of per-request latencies (its admin API); Prometheus has
only the histogram's buckets, which the rank test reads as ties."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Protocol

from tasks.rollout.policy import Observation

P99 = 0.99


@dataclass(frozen=True)
class Snapshot:
    """One version's cumulative counters (Prometheus counters only ever grow)."""

    requests: float = 0
    errors: float = 0
    feedback_positive: float = 0
    feedback_total: float = 0
    buckets: tuple[tuple[float, float], ...] = field(default_factory=tuple)  # (le, count)
    samples: tuple[tuple[int, float], ...] = ()  # (sequence number, latency seconds)


class MetricsSource(Protocol):
    def snapshot(self) -> dict[str, Snapshot]: ...


def bucket_quantile(q: float, buckets: tuple[tuple[float, float], ...]) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding q.

    Above the last finite bound the answer is that bound (as Prometheus does)."""
    ordered = sorted(buckets)
    total = ordered[-1][1] if ordered else 0
    if total <= 0:
        return 0.0
    rank, low, below = q * total, 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if math.isinf(le):
                return low
            return low + (le - low) * (rank - below) / max(count - below, 1e-12)
        low, below = le, count
    return low


def _minus(after: Snapshot, before: Snapshot | None) -> Snapshot:
    if before is None:
        return after
    prior = dict(before.buckets)
    # A restarted server resets its counters: count from zero rather than go negative.
    if after.requests < before.requests:
        return after
    last = max((seq for seq, _ in before.samples), default=-1)
    return Snapshot(after.requests - before.requests, after.errors - before.errors,
                    after.feedback_positive - before.feedback_positive,
                    after.feedback_total - before.feedback_total,
                    tuple((le, c - prior.get(le, 0)) for le, c in after.buckets),
                    tuple(s for s in after.samples if s[0] > last))


def _latencies(d: Snapshot) -> tuple[tuple[float, int], ...]:
    """Milliseconds with counts: the per-request sample where there is one, else the
    histogram's buckets (each bucket's bound standing for the latencies in it)."""
    if d.samples:
        return tuple((seconds * 1000, 1) for _, seconds in d.samples)
    out, below = [], 0.0
    for le, count in sorted(d.buckets):
        if count > below:
            out.append((le * 1000, int(count - below)))
        below = count
    return tuple(out)


def observation(before: Snapshot | None, after: Snapshot | None) -> Observation:
    if after is None:
        return Observation(requests=0, errors=0, p99_ms=0.0)
    d = _minus(after, before)
    return Observation(requests=int(d.requests), errors=int(d.errors),
                       p99_ms=bucket_quantile(P99, d.buckets) * 1000,
                       feedback_positive=int(d.feedback_positive),
                       feedback_total=int(d.feedback_total), latencies=_latencies(d))


def snapshots_from_text(text: str) -> dict[str, Snapshot]:
    """Parse the server's exposition format into per-version snapshots."""
    from prometheus_client.parser import text_string_to_metric_families

    acc: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            version = s.labels.get("version")
            if version is None:
                continue
            if s.name == "aigc_requests_total":
                acc[version]["requests"] += s.value
            elif s.name == "aigc_request_errors_total":
                acc[version]["errors"] += s.value
            elif s.name == "aigc_feedback_total":
                acc[version]["feedback_total"] += s.value
                if s.labels.get("sentiment") == "positive":
                    acc[version]["feedback_positive"] += s.value
            elif s.name == "aigc_request_latency_seconds_bucket":
                buckets[version][float(s.labels["le"])] += s.value
    return {v: Snapshot(buckets=tuple(sorted(buckets[v].items())), **acc[v])
            for v in set(acc) | set(buckets)}


class ServerMetrics:
    """Scrape one server's /metrics (the embedded default: a single replica), and with the
    admin key its latency sample."""

    def __init__(self, url: str, admin_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.admin_key = admin_key

    def snapshot(self) -> dict[str, Snapshot]:
        import requests

        reply = requests.get(f"{self.url}/metrics", timeout=10)
        reply.raise_for_status()
        snapshots = snapshots_from_text(reply.text)
        if self.admin_key is None:
            return snapshots
        reply = requests.get(f"{self.url}/admin/latencies", timeout=10,
                             headers={"Authorization": f"Bearer {self.admin_key}"})
        reply.raise_for_status()
        samples = reply.json()["versions"]
        return {v: replace(s, samples=tuple((int(q), float(t)) for q, t in samples.get(v, ())))
                for v, s in snapshots.items()}


# Summed over every replica Prometheus scrapes (KServe revisions included).
PROMQL = {
    "requests": "sum by (version) (aigc_requests_total{%s})",
    "errors": "sum by (version) (aigc_request_errors_total{%s})",
    "feedback_total": "sum by (version) (aigc_feedback_total{%s})",
    "feedback_positive": 'sum by (version) (aigc_feedback_total{sentiment="positive",%s})',
    "buckets": "sum by (version, le) (aigc_request_latency_seconds_bucket{%s})",
}


class PrometheusMetrics:
    """Instant queries of cumulative series; differences of two snapshots give an interval."""

    def __init__(self, url: str, selector: str = "") -> None:
        self.url = url.rstrip("/")
        self.selector = selector  # e.g. namespace="models",service=~"aigc-.*"

    def _query(self, promql: str) -> list[dict]:
        import requests

        reply = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=30)
        reply.raise_for_status()
        body = reply.json()
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus query failed: {body}")
        return body["data"]["result"]

    def snapshot(self) -> dict[str, Snapshot]:
        acc: dict[str, dict[str, float]] = defaultdict(dict)
        buckets: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for key, template in PROMQL.items():
            for row in self._query(template % self.selector):
                version, value = row["metric"]["version"], float(row["value"][1])
                if key == "buckets":
                    buckets[version].append((float(row["metric"]["le"]), value))
                else:
                    acc[version][key] = value
        return {v: Snapshot(buckets=tuple(sorted(buckets[v])), **acc[v])
                for v in set(acc) | set(buckets)}
