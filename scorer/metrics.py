"""Prometheus metrics of one scorer app, in its own registry (tests build many apps per process)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


class ScorerMetrics:
    """Request counts and latencies by route and status, the served model, reloads."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "scorer_requests_total",
            "HTTP requests",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "scorer_request_seconds",
            "HTTP request latency",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_info = Gauge(
            "scorer_model_info",
            "The model version being served (1)",
            ["name", "version"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "scorer_reloads_total", "Model reloads", ["result"], registry=self.registry
        )
        self.quoted_items = Counter(
            "scorer_quoted_items_total", "Items priced", registry=self.registry
        )
        self.explored_items = Counter(
            "scorer_explored_items_total", "Items priced by exploration", registry=self.registry
        )
        self.degraded = Counter(
            "scorer_degraded_quotes_total",
            "Quotes served without the user's state from the online store, by reason "
            "(store_auth, store_timeout, store_unavailable, store_error)",
            ["reason"],
            registry=self.registry,
        )
        self.outcome_conflicts = Counter(
            "scorer_outcome_conflicts_total",
            "Outcomes refused (409) because the offer's recorded outcome has the other label",
            registry=self.registry,
        )
        self.outcome_repeats = Counter(
            "scorer_outcome_repeats_total",
            "Outcomes reported again with the recorded label (200, nothing written)",
            registry=self.registry,
        )
        self.shed = Counter(
            "scorer_shed_requests_total",
            "Requests answered 503 at once because the worker had PRICING_MAX_IN_FLIGHT in work",
            registry=self.registry,
        )
        self.arm_quotes = Counter(
            "scorer_experiment_quotes_total",
            "Quotes by experiment arm, as served (a disabled arm's users count as champion)",
            ["experiment", "arm"],
            registry=self.registry,
        )
        self.arm_serving = Gauge(
            "scorer_experiment_arm_serving",
            "1 when the experiment arm serves its users, 0 when it is disabled",
            ["experiment", "arm"],
            registry=self.registry,
        )

        self.store_up = Gauge(
            "scorer_store_up",
            "1 when the online user store answered the last readiness check",
            registry=self.registry,
        )
        self.store_up.set(1)

    def set_model(self, name: str, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name=name, version=version).set(1)

    def watch(self, pricer: Any, offer_log: Any) -> None:
        """Expose the quote path's stage timings and the offer log's batching, read at scrape
        time (nothing is added to a request's work)."""
        self.registry.register(_PipelineCollector(pricer, offer_log))


class _PipelineCollector:
    """Scrape-time view of `Pricer.stages` (seconds and calls per stage) and offer-log batches.

    With several worker processes on one port each answers /metrics for itself; `scorer_worker`
    says which (pid, offer-log writer slot), so a scraper can tell the series apart.
    """

    def __init__(self, pricer: Any, offer_log: Any) -> None:
        self.pricer = pricer
        self.offer_log = offer_log

    def collect(self) -> Iterator[Metric]:
        snap = self.pricer.stages.snapshot()
        seconds = CounterMetricFamily(
            "scorer_quote_stage_seconds", "Time spent per quote-path stage", labels=["stage"]
        )
        calls = CounterMetricFamily(
            "scorer_quote_stage_calls", "Times each quote-path stage ran", labels=["stage"]
        )
        for stage, value in snap["seconds"].items():
            seconds.add_metric([stage], value)
            calls.add_metric([stage], snap["counts"][stage])
        yield seconds
        yield calls
        yield CounterMetricFamily("scorer_quotes_priced", "Quotes priced", value=snap["quotes"])
        batches, records = self.offer_log.batch_stats
        yield CounterMetricFamily(
            "scorer_offer_log_batches", "Group-committed offer-log writes", value=batches
        )
        yield CounterMetricFamily(
            "scorer_offer_log_batched_quotes",
            "Quotes written by group-committed offer-log writes",
            value=records,
        )
        worker = GaugeMetricFamily(
            "scorer_worker", "This process (1)", labels=["pid", "offer_log_writer"]
        )
        worker.add_metric([str(os.getpid()), str(self.offer_log.slot)], 1)
        yield worker


class MetricsMiddleware:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): counts and times each request.

    The route label is the matched route template, or "unmatched", so label cardinality stays bounded.
    """

    def __init__(self, app: ASGIApp, metrics: ScorerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route: Any = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            labels = (label, scope.get("method", ""), str(status["code"]))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - start)
