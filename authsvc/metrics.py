"""Prometheus metrics, one registry per app (tests run several apps in one process).

Per-request counts and latencies are kept in plain dicts and handed to prometheus_client
only when scraped: the labelled-metric path costs several microseconds a request, which the
hot endpoints cannot afford. Domain events use ordinary prometheus_client counters."""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class RequestStats(Collector):
    """HTTP requests by route and status, and latency by route."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], int] = {}
        # route -> [count per bucket ..., count above the last bucket, sum of seconds]
        self._latency: dict[str, list[float]] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one request."""
        key = (route, status)
        self._counts[key] = self._counts.get(key, 0) + 1
        row = self._latency.get(route)
        if row is None:
            row = self._latency[route] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        row[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        row[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "authsvc_http_requests",
            "HTTP requests by route and status.",
            labels=["route", "status"],
        )
        for (route, status), count in sorted(self._counts.items()):
            requests.add_metric([route, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "authsvc_http_request_duration_seconds",
            "HTTP request latency by route.",
            labels=["route"],
        )
        for route, row in sorted(self._latency.items()):
            cumulative, buckets = 0.0, []
            for bound, in_bucket in zip((*LATENCY_BUCKETS, float("inf")), row[:-1], strict=True):
                cumulative += in_bucket
                buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
            latency.add_metric([route], buckets, row[-1])
        yield latency


class Metrics:
    """Every metric authsvc exports."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.http = RequestStats()
        r.register(self.http)
        self.logins = Counter("authsvc_logins", "Logins by outcome.", ["outcome"], registry=r)
        self.refreshes = Counter(
            "authsvc_refreshes", "Refreshes by outcome.", ["outcome"], registry=r
        )
        self.logouts = Counter(
            "authsvc_sessions_ended", "Sessions ended, by reason.", ["reason"], registry=r
        )
        self.evictions = Counter(
            "authsvc_session_evictions", "Sessions evicted by the session limit.", registry=r
        )
        self.reuse_detected = Counter(
            "authsvc_refresh_reuse_detected", "Refresh-token reuse detections.", registry=r
        )
        self.throttled = Counter(
            "authsvc_throttled", "Requests throttled, by route.", ["route"], registry=r
        )
        self.redis_errors = Counter("authsvc_redis_errors", "Storage errors.", registry=r)
        self.webhook_queued = Counter(
            "authsvc_webhook_events_queued",
            "Webhook events taken from the outbox by this instance for the first time.",
            registry=r,
        )
        self.webhook_delivered = Counter(
            "authsvc_webhook_events_delivered", "Webhook events delivered.", registry=r
        )
        self.webhook_failures = Counter(
            "authsvc_webhook_delivery_failures",
            "Webhook delivery attempts that failed.",
            registry=r,
        )
        self.webhook_dropped = Counter(
            "authsvc_webhook_events_dropped",
            "Webhook events given up after failing for a day.",
            registry=r,
        )
        self.webhook_undelivered = Gauge(
            "authsvc_webhook_events_undelivered",
            "Webhook events in the outbox, queued or being retried (as of the last sweep).",
            registry=r,
        )
        self.webhook_oldest = Gauge(
            "authsvc_webhook_oldest_undelivered_seconds",
            "Age of the oldest undelivered webhook event (as of the last sweep).",
            registry=r,
        )
