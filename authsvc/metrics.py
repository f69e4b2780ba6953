"""Prometheus metrics, one registry per app (tests run several apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Every metric authsvc exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "authsvc_http_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "authsvc_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.logins = Counter("authsvc_logins", "Logins by outcome.", ["outcome"], registry=r)
        self.refreshes = Counter(
            "authsvc_refreshes", "Refreshes by outcome.", ["outcome"], registry=r
        )
        self.logouts = Counter(
            "authsvc_logouts", "Sessions ended, by reason.", ["reason"], registry=r
        )
        self.evictions = Counter(
            "authsvc_session_evictions", "Sessions evicted by the session limit.", registry=r
        )
        self.reuse_detected = Counter(
            "authsvc_refresh_reuse_detected", "Refresh-token reuse detections.", registry=r
        )
        self.throttled = Counter(
            "authsvc_throttled", "Requests throttled, by kind.", ["kind"], registry=r
        )
        self.redis_errors = Counter("authsvc_redis_errors", "Storage errors.", registry=r)
