"""The controller loop and the metric arithmetic under it, on scripted metrics."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from serving.telemetry import Telemetry
from tasks.rollout.controller import run_canary
from tasks.rollout.observe import (
    PrometheusMetrics,
    Snapshot,
    bucket_quantile,
    observation,
    snapshots_from_text,
)
from tasks.rollout.policy import Action, CanaryPolicy
from tests.rollout.scripted import Traffic

POLICY = CanaryPolicy(min_requests=10)
BUCKETS = ((0.1, 0.0), (0.2, 0.0), (float("inf"), 0.0))


def test_bucket_quantile_interpolates_like_prometheus():
    buckets = ((0.1, 50.0), (0.2, 90.0), (0.4, 100.0), (float("inf"), 100.0))
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.1)
    assert bucket_quantile(0.7, buckets) == pytest.approx(0.15)
    assert bucket_quantile(0.99, buckets) == pytest.approx(0.38)
    assert bucket_quantile(0.99, ((0.1, 0.0), (float("inf"), 5.0))) == 0.1  # past the last
    assert bucket_quantile(0.99, ()) == 0.0


def test_server_metrics_parse_into_per_version_snapshots():
    t = Telemetry()
    for _ in range(7):
        t.requests.labels("3", "champion").inc()
        t.latency.labels("3").observe(0.03)
    t.errors.labels("3", "champion").inc(2)
    t.requests.labels("4", "challenger").inc()
    t.latency.labels("4").observe(2.5)
    t.feedback.labels("3", "positive").inc(4)
    t.feedback.labels("3", "negative").inc(1)
    from prometheus_client import generate_latest

    snaps = snapshots_from_text(generate_latest(t.registry).decode())
    three = observation(None, snaps["3"])
    assert (three.requests, three.errors, three.feedback_positive, three.feedback_total) == (
        7, 2, 4, 5)
    assert 25 <= three.p99_ms <= 50  # inside the 25-50 ms bucket
    assert 2000 <= observation(None, snaps["4"]).p99_ms <= 3000


def test_latencies_are_the_new_sample_or_else_the_buckets():
    before = Snapshot(2, 0, 0, 0, ((0.1, 2.0), (float("inf"), 2.0)), ((0, 0.05), (1, 0.07)))
    after = Snapshot(4, 0, 0, 0, ((0.1, 3.0), (float("inf"), 4.0)),
                     ((0, 0.05), (1, 0.07), (5, 0.09), (6, 0.3)))
    assert observation(before, after).latencies == ((90.0, 1), (300.0, 1))
    bucketed = observation(replace(before, samples=()), replace(after, samples=()))
    assert bucketed.latencies == ((100.0, 1), (float("inf"), 1))  # one per bucket, as ties
    assert bucketed.latency_samples == 2


def test_observation_is_the_difference_and_survives_a_counter_reset():
    before = Snapshot(100, 5, 10, 20, ((0.1, 90.0), (float("inf"), 100.0)))
    after = Snapshot(150, 6, 15, 30, ((0.1, 130.0), (float("inf"), 150.0)))
    obs = observation(before, after)
    assert (obs.requests, obs.errors, obs.feedback_positive, obs.feedback_total) == (50, 1, 5, 10)
    restarted = Snapshot(20, 0, 0, 0, ((0.1, 20.0), (float("inf"), 20.0)))
    assert observation(before, restarted).requests == 20
    assert observation(before, None).requests == 0


class FakeTarget:
    def __init__(self) -> None:
        self.weights: list[int] = []

    def set_weight(self, version: str, weight: int) -> None:
        assert version == "2"
        self.weights.append(weight)


def _run(traffic: Traffic, target: FakeTarget):
    return run_canary(target=target, source=traffic, champion="1", challenger="2",
                      policy=POLICY, interval_s=60, sleep=lambda s: None)


def test_a_healthy_canary_walks_the_steps_and_keeps_100_percent():
    target = FakeTarget()
    outcome = _run(Traffic(lambda: target.weights[-1] if target.weights else 0), target)
    assert outcome.action is Action.PROMOTE
    assert target.weights == [5, 25, 50, 100]
    # At 100 % the champion serves nothing: judged against its last well-sampled step.
    assert outcome.steps[-1].champion["requests"] == 100
    assert json.loads(json.dumps(outcome.to_dict()))["decision"] == "promote"


def test_an_erroring_canary_is_rolled_back_to_zero():
    target = FakeTarget()
    outcome = _run(Traffic(lambda: target.weights[-1], challenger_error_rate=0.5), target)
    assert outcome.action is Action.ROLLBACK and target.weights == [5, 0]
    assert len(outcome.steps) == 1


def test_a_failure_mid_canary_resets_the_weight_before_it_propagates():
    target = FakeTarget()
    with pytest.raises(ConnectionError):
        _run(Traffic(lambda: target.weights[-1], fail_after=3), target)
    assert target.weights[-1] == 0 and len(target.weights) > 2


def test_prometheus_source_sums_versions_from_instant_queries():
    answers = {
        "aigc_requests_total": [("3", None, 40), ("4", None, 10)],
        "aigc_request_errors_total": [("4", None, 1)],
        'sentiment="positive"': [("3", None, 5)],
        "aigc_feedback_total": [("3", None, 8)],
        "aigc_request_latency_seconds_bucket": [("3", "0.1", 40), ("3", "+Inf", 40),
                                                ("4", "0.1", 5), ("4", "+Inf", 10)],
    }
    queries = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            from urllib.parse import parse_qs, urlsplit

            query = parse_qs(urlsplit(self.path).query)["query"][0]
            queries.append(query)
            key = next(k for k in answers if k in query)
            result = [{"metric": {"version": v} | ({"le": le} if le else {}),
                       "value": [0, str(n)]} for v, le, n in answers[key]]
            body = json.dumps({"status": "success", "data": {"resultType": "vector",
                                                             "result": result}}).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    http = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        snaps = PrometheusMetrics(f"http://127.0.0.1:{http.server_port}",
                                  'namespace="models"').snapshot()
    finally:
        http.shutdown()
    assert all('namespace="models"' in q for q in queries)
    assert (snaps["3"].requests, snaps["3"].feedback_positive, snaps["3"].feedback_total) == (
        40, 5, 8)
    assert snaps["4"].errors == 1
    assert observation(None, snaps["4"]).p99_ms == 100.0  # the slow half is past 0.1 s
