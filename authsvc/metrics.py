"""Prometheus metrics, one registry per app (tests run several apps in one process).

Per-request counts and latencies are recorded in plain lists, counted every FLUSH_EVERY
seconds (Metrics.flush) and handed to prometheus_client only when scraped: the
labelled-metric path costs several microseconds a request, which the hot endpoints cannot
afford. Domain events use ordinary prometheus_client counters.

With `--workers N` every worker writes its metrics to files in PROMETHEUS_MULTIPROC_DIR
(prometheus_client's multiprocess mode), and a scrape of any worker reads all of them. The
per-request numbers reach those files in bulk, at every flush and before a scrape, so the
hot path stays a list append."""

from __future__ import annotations

import bisect
import collections
import functools
import operator
import os
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
FLUSH_EVERY = 0.1  # seconds: how far behind another worker's requests a scrape may be


class RequestStats(Collector):
    """HTTP requests by route and status, and latency by route.

    Each route's requests are recorded by its own `recorder`: one C call a request, which
    appends (status, seconds) to the route's list. The lists are folded into the counts in
    bulk, by C-level counters, at a scrape and at every flush (see Metrics.flush): one by one,
    under load, the counting cost several times as much."""

    def __init__(self) -> None:
        self._pending: dict[str, list[tuple[int, float]]] = {}
        self._counts: dict[tuple[str, int], int] = {}
        # route -> [count per bucket ..., count above the last bucket, sum of seconds]
        self._latency: dict[str, list[float]] = {}

    def recorder(self, route: str) -> Callable[[tuple[int, float]], None]:
        """What counts a request of `route`: `record((status, seconds))`."""
        return self._pending.setdefault(route, []).append

    def fold(self) -> None:
        """Count the requests recorded since the last fold."""
        counts, latency = self._counts, self._latency
        for route, pending in self._pending.items():
            if not pending:
                continue
            records = pending.copy()
            pending.clear()  # in place: the route's recorder appends to this list
            for status, count in collections.Counter(map(_status, records)).items():
                counts[route, status] = counts.get((route, status), 0) + count
            row = latency.get(route)
            if row is None:
                row = latency[route] = [0.0] * (len(LATENCY_BUCKETS) + 2)
            for bucket, count in collections.Counter(map(_bucket, map(_seconds, records))).items():
                row[bucket] += count
            row[-1] += sum(map(_seconds, records))

    def drain(self) -> tuple[dict[tuple[str, int], int], dict[str, list[float]]]:
        """What was counted since the last drain (and forget it)."""
        self.fold()
        counts, latency = self._counts, self._latency
        self._counts, self._latency = {}, {}
        return counts, latency

    def collect(self) -> Iterator[Metric]:
        self.fold()
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


_status = operator.itemgetter(0)
_seconds = operator.itemgetter(1)
_bucket = functools.partial(bisect.bisect_left, LATENCY_BUCKETS)


class SharedRequestStats:
    """RequestStats handed in bulk to multiprocess-mode metrics, which a scrape of any
    worker reads from the files of all of them."""

    def __init__(self, stats: RequestStats, registry: CollectorRegistry) -> None:
        self._stats = stats
        self._requests = Counter(
            "authsvc_http_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=registry,
        )
        self._latency = Histogram(
            "authsvc_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def flush(self) -> None:
        """Write out what was counted since the last flush."""
        counts, latency = self._stats.drain()
        for (route, status), count in counts.items():
            self._requests.labels(route, str(status)).inc(count)
        for route, row in latency.items():
            child = self._latency.labels(route)
            # Histogram has no bulk observe: its per-bucket values (not cumulative, the
            # last one +Inf) and its sum are filled directly, as observe() would.
            for value, in_bucket in zip(child._buckets, row[:-1], strict=True):
                if in_bucket:
                    value.inc(in_bucket)
            child._sum.inc(row[-1])


class Metrics:
    """Every metric authsvc exports; `shared` in multiprocess mode (see the module)."""

    def __init__(self) -> None:
        self.shared = bool(os.environ.get(MULTIPROC_DIR))
        self.http = RequestStats()
        self.registry = r = CollectorRegistry(auto_describe=not self.shared)
        self._shared_http: SharedRequestStats | None = None
        if self.shared:
            # The metrics below write to this worker's files; the registry that scrapes
            # read holds only the collector of every worker's files.
            multiprocess.MultiProcessCollector(r)  # type: ignore[no-untyped-call]
            r = CollectorRegistry()
            self._shared_http = SharedRequestStats(self.http, r)
        else:
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
        # Every worker sweeps the same outbox: a scrape shows the latest sweep's figure.
        self.webhook_undelivered = Gauge(
            "authsvc_webhook_events_undelivered",
            "Webhook events in the outbox, queued or being retried (as of the last sweep).",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.webhook_oldest = Gauge(
            "authsvc_webhook_oldest_undelivered_seconds",
            "Age of the oldest undelivered webhook event (as of the last sweep).",
            registry=r,
            multiprocess_mode="mostrecent",
        )

    def flush(self) -> None:
        """Count the requests recorded since the last flush; in multiprocess mode, write
        this worker's counts out for scrapes."""
        if self._shared_http is not None:
            self._shared_http.flush()
        else:
            self.http.fold()
