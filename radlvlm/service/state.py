"""What the running service holds: settings, the runtime the use cases run on, keys, limits and metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from radlvlm.pipeline.runtime import Runtime
from radlvlm.pipeline.task_engine import TaskEngine
from radlvlm.service.security import KeyStore, RateLimiter
from radlvlm.settings import Settings


@dataclass
class Metrics:
    """Prometheus metrics in a registry of this app's own (no PHI in any label: endpoints and codes only)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "radlvlm_requests_total",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "radlvlm_request_seconds",
            "Request latency by endpoint",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 1.5, 2.5, 5, 10, 30, 60, 120),
        )
        self.guardrail_flags = Counter(
            "radlvlm_guardrail_flags_total", "Guardrail flags raised", ["code"], registry=self.registry
        )
        self.queue_depth = Gauge("radlvlm_engine_queue_depth", "Requests waiting for the model", registry=self.registry)
        self.engine_rejected = Gauge(
            "radlvlm_engine_rejected", "Requests refused by a full queue", registry=self.registry
        )
        self.engine_batches = Gauge("radlvlm_engine_batches", "Batches run by the engine", registry=self.registry)


@dataclass
class ServiceState:
    settings: Settings
    runtime: Runtime  # the engine, the project key, the audit trail, the archive: what the use cases run on
    keys: KeyStore
    limiter: RateLimiter
    metrics: Metrics
    ready: bool = False  # the model is loaded and warmed up
    load_failure: str | None = None  # why the model did not load (one line), when it did not
    started: float = field(default_factory=time.time)

    @property
    def engine(self) -> TaskEngine:
        return self.runtime.engine

    @property
    def model_info(self) -> dict[str, Any]:
        return self.runtime.model_info
