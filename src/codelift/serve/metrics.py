"""What `GET /metrics` exposes, in Prometheus text format: requests by route and status, latency,
requests waiting, tokens generated. One registry per app, so two servers in a process stay apart."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ROUTES = ("/v1/models", "/v1/completions", "/v1/chat/completions", "/health", "/metrics")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


@dataclass
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    tokens: Counter

    def observe(self, path: str, status: int, seconds: float) -> None:
        route = path if path in ROUTES else "other"  # unknown paths share one label: bounded cardinality
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)


def make_metrics(waiting: Callable[[], int]) -> Metrics:
    registry = CollectorRegistry()
    Gauge("codelift_requests_waiting", "Requests admitted and not yet generating.",
          registry=registry).set_function(waiting)
    return Metrics(
        registry,
        Counter("codelift_requests", "HTTP requests answered, by route and status.", ["route", "status"],
                registry=registry),
        Histogram("codelift_request_seconds", "Time to answer a request, by route.", ["route"],
                  buckets=LATENCY_BUCKETS, registry=registry),
        Counter("codelift_generated_tokens", "New tokens generated for answered requests.", registry=registry),
    )
