"""Prometheus metrics in a private registry (no process collectors' surprises across forks)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry()
REQUESTS = Counter("facefusion_requests_total", "Requests by route, kind and status", ["route", "kind", "status"], registry=REGISTRY)
STAGE_SECONDS = Histogram("facefusion_stage_seconds", "Time per pipeline stage", ["stage"], registry=REGISTRY,
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
INFLIGHT = Gauge("facefusion_inflight_fusions", "Fusions running now", registry=REGISTRY)
COLD_START = Gauge("facefusion_cold_start_seconds", "Process start to ready", registry=REGISTRY)
MODEL_LOAD = Gauge("facefusion_model_load_seconds", "Time to verify and load the model set", registry=REGISTRY)
MODEL_PROVIDER = Gauge("facefusion_model_provider_info", "1 for the execution provider each model runs on",
                       ["role", "provider"], registry=REGISTRY)
READY = Gauge("facefusion_ready", "1 when models are loaded and warmed", registry=REGISTRY)


def render() -> bytes:
    return generate_latest(REGISTRY)
