"""Prometheus metrics of one API process (a registry per app, so tests can build many apps)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class _JobsByStatus(Collector):
    """``mixq_jobs{status=...}`` read from the database at scrape time (workers run elsewhere)."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("mixq_jobs", "Jobs by status", labels=["status"])
        try:
            counts = self.counts()
        except Exception:  # noqa: BLE001 - a scrape while the DB is away reports no job gauge
            counts = {}
        for status, n in sorted(counts.items()):
            family.add_metric([status], n)
        yield family


class Metrics:
    def __init__(self, job_counts: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mixq_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency_s = Histogram(
            "mixq_http_request_duration_seconds", "HTTP request latency (s)", ["route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
        self.jobs_submitted = Counter("mixq_jobs_submitted", "Jobs created", registry=self.registry)
        self.registry.register(_JobsByStatus(job_counts))
