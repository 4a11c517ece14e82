"""Prometheus metrics in a private registry (no process collectors' surprises across forks).

Names and units follow Prometheus conventions (`_seconds`, `_bytes`, `_total`, `_ratio`). Every
metric here is documented in docs/observability.md; knative/observability/ queries only these (and
says where it uses one of Knative's own).

With WORKERS > 1 the supervisor (function/serve.py) gives every worker one PROMETHEUS_MULTIPROC_DIR, and
prometheus_client's multiprocess mode keeps each worker's values in files there: a scrape, which reaches
one worker through the shared socket, then reads the whole pod (counters and histograms summed, each
gauge as its `multiprocess_mode` says). Before, each scrape saw one worker's counters, a total that
jumped between workers' values and read as resets. The scrape-time collectors (GPU, image codec) still
say what the answering worker sees.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("facefusion.metrics")

REGISTRY = CollectorRegistry()
REQUESTS = Counter("facefusion_requests_total", "Requests by route, kind and status", ["route", "kind", "status"], registry=REGISTRY)
STAGE_SECONDS = Histogram("facefusion_stage_seconds", "Time per pipeline stage", ["stage"], registry=REGISTRY,
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
# multiprocess_mode (WORKERS > 1 only): how the workers' values of a gauge make the pod's
INFLIGHT = Gauge("facefusion_inflight_fusions", "Fusions running now", registry=REGISTRY, multiprocess_mode="livesum")
COLD_START = Gauge("facefusion_cold_start_seconds", "Process start to ready", registry=REGISTRY,
                   multiprocess_mode="livemax")
MODEL_LOAD = Gauge("facefusion_model_load_seconds", "Time to verify and load the model set", registry=REGISTRY,
                   multiprocess_mode="livemax")
MODEL_PROVIDER = Gauge("facefusion_model_provider_info", "1 for the execution provider each model runs on",
                       ["role", "provider"], registry=REGISTRY, multiprocess_mode="livemax")
MODEL_CUDA_GRAPH = Gauge("facefusion_model_cuda_graph", "1 where a model's runs replay as CUDA graphs, 0 where "
                         "CUDA_GRAPHS names it but they are off (/readyz says why)", ["role"], registry=REGISTRY,
                         multiprocess_mode="livemin")
READY = Gauge("facefusion_ready", "1 when models are loaded and warmed", registry=REGISTRY,
              multiprocess_mode="livemin")  # a pod whose live workers are not all ready reads 0
# with WORKERS > 1 the first worker starts alone (function/serve.py): until its siblings start, the live
# workers are all ready while the pod is not yet complete; these two tell how far it is
WORKERS_READY = Gauge("facefusion_workers_ready", "Serving processes of this pod that are ready", registry=REGISTRY,
                      multiprocess_mode="livesum")
WORKERS = Gauge("facefusion_workers", "Serving processes this pod runs (WORKERS)", registry=REGISTRY,
                multiprocess_mode="livemax")

# -- operators' questions (docs/observability.md) ----------------------------------------------------
REQUEST_SECONDS = Histogram(
    "facefusion_request_duration_seconds", "Time from the request reaching the function to its answer, by route, "
    "kind and status", ["route", "kind", "status"], registry=REGISTRY,
    buckets=(0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120))
INFLIGHT_REJECTED = Counter("facefusion_inflight_rejections_total",
                            "Fusions refused with 429 because MAX_INFLIGHT were already running", registry=REGISTRY)
QUEUE_WAIT = Histogram(
    "facefusion_queue_wait_seconds", "Time an event waited before this function took it: from the Broker's "
    "arrival time (knativearrivaltime), else the event's own time, to the start of the request", ["event_type"],
    registry=REGISTRY, buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900))
EVENTS = Counter("facefusion_events_total", "Events by type and outcome: done, duplicate, ignored, retry (a "
                 "retryable failure: Eventing redelivers) or failed (not retryable: Eventing dead-letters it at once)",
                 ["event_type", "outcome"], registry=REGISTRY)
INFO = Gauge("facefusion_info", "1 per pod, labelled with its service and revision (count it for pods per revision)",
             ["service", "revision"], registry=REGISTRY, multiprocess_mode="livemax")
COLD_START_SECONDS = Histogram(
    "facefusion_cold_start_duration_seconds", "Process start to ready, observed once per process", ["revision"],
    registry=REGISTRY, buckets=(1, 2.5, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600))
MODEL_LOAD_SECONDS = Histogram(
    "facefusion_model_load_duration_seconds", "Model set verification and session creation, once per process",
    ["revision"], registry=REGISTRY, buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300))
SPANS_DROPPED = Counter("facefusion_trace_spans_dropped_total", "Trace spans lost: queue_full (the exporter fell "
                        "behind) or export_failed (the collector refused or could not be reached)", ["reason"],
                        registry=REGISTRY)

# event types seen on the wire are caller-controlled: keep the label's values bounded
_KNOWN_TYPE = re.compile(r"^(dev\.facefusion\.|google\.cloud\.storage\.object\.v1\.|com\.amazonaws\.s3\.|"
                         r"Microsoft\.Storage\.|Microsoft\.EventGrid\.|s3:)[A-Za-z0-9:._-]{1,48}$")


def event_type_label(event_type: str) -> str:
    """The event type as a label value: the type itself when it is one of the families this function
    handles, else `other` (a caller must not be able to create series at will)."""
    return event_type if _KNOWN_TYPE.match(event_type or "") else "other"


class GpuCollector(Collector):
    """GPU memory and utilisation of the devices this worker sees, read through NVML (`nvidia-ml-py`,
    in the `gpu` extra) at scrape time. Nothing at all without NVML or a GPU.

    Device-level figures: in a container NVML reports host process ids, so a worker's own share cannot be
    told apart; one GPU per pod (the Service's limits) makes the device figures the pod's."""

    def __init__(self) -> None:
        self._nvml = None
        self._tried = False
        self._lock = threading.Lock()

    def _init(self):
        with self._lock:
            if not self._tried:
                self._tried = True
                try:
                    import pynvml

                    pynvml.nvmlInit()
                    self._nvml = pynvml
                except Exception as exc:  # no library, no driver, no device: no GPU metrics
                    log.debug("no GPU metrics: %s", exc)
            return self._nvml

    def collect(self) -> Iterator[GaugeMetricFamily]:
        nvml = self._init()
        if nvml is None:
            return
        used = GaugeMetricFamily("facefusion_gpu_memory_used_bytes", "GPU memory in use on the device", labels=["gpu"])
        total = GaugeMetricFamily("facefusion_gpu_memory_total_bytes", "GPU memory of the device", labels=["gpu"])
        util = GaugeMetricFamily("facefusion_gpu_utilization_ratio", "Fraction of the last sample period in which "
                                 "a kernel ran on the device", labels=["gpu"])
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                used.add_metric([str(index)], float(memory.used))
                total.add_metric([str(index)], float(memory.total))
                util.add_metric([str(index)], nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
        except Exception as exc:  # a scrape never fails for the GPU's sake
            log.debug("GPU metrics unavailable: %s", exc)
            return
        yield from (used, total, util)


GPU = GpuCollector()
REGISTRY.register(GPU)


class ImageCodecCollector(Collector):
    """`facefusion_image_codec_images_total{op, codec}`: JPEGs decoded and encoded with IMAGE_CODEC=nvimgcodec,
    by the GPU (`codec="nvimgcodec"`) or by OpenCV because the GPU's decoder or encoder was busy with another
    image (`codec="opencv"`, pipeline/gpu_jpeg.py). The codec counts for itself; this reads its counts at
    scrape time through `source` (function/observe.py sets it), so the request path adds nothing. No series
    at all while `source` gives None (the default codec, or no pipeline loaded yet)."""

    NAME = "facefusion_image_codec_images"
    HELP = ("JPEGs done with IMAGE_CODEC=nvimgcodec by op (decode, encode) and codec: nvimgcodec (the GPU) or "
            "opencv (the GPU's decoder or encoder was busy, so OpenCV did it at once)")

    def __init__(self) -> None:
        self.source: Callable[[], Mapping[tuple[str, str], int] | None] | None = None

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.NAME, self.HELP, labels=["op", "codec"])

    def collect(self) -> Iterator[CounterMetricFamily]:
        counts = self.source() if self.source is not None else None
        if counts is None:
            return
        family = CounterMetricFamily(self.NAME, self.HELP, labels=["op", "codec"])
        for (op, codec), value in sorted(counts.items()):
            family.add_metric([op, codec], float(value))
        yield family


IMAGE_CODEC_IMAGES = ImageCodecCollector()
REGISTRY.register(IMAGE_CODEC_IMAGES)


def _exposed() -> CollectorRegistry:
    """What /metrics shows: this process's registry, or with WORKERS > 1 (PROMETHEUS_MULTIPROC_DIR, read
    at import as prometheus_client reads it) every worker's values from the shared folder, beside the
    scrape-time collectors. Built once; the multiprocess reader is imported only where it is used."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        return REGISTRY
    from prometheus_client import multiprocess

    pod = CollectorRegistry()
    multiprocess.MultiProcessCollector(pod, path=folder)
    for collector in (GPU, IMAGE_CODEC_IMAGES):
        pod.register(collector)
    return pod


EXPOSED = _exposed()


def render() -> bytes:
    return generate_latest(EXPOSED)
