"""The function's settings from the environment (README, Configuration).

Read with the pipeline's one parser (`pipeline.EnvReader`). Reading never raises: a bad value is kept
as a problem, its default is used, and the warm-up keeps the process not ready with the problem as its
reason. The import of the function therefore never fails on configuration, and `/readyz` says why.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pipeline import EnvReader
from pipeline.config import DEFAULT_MAX_IMAGE_BYTES, VideoLimits

FUSION_BUDGET_S = 120.0  # the longest one fusion is expected to take, for the default LEASE_TTL_S
DEFAULT_MAX_VIDEO_BYTES = 512 * 1024 * 1024
JOBS_FOLDER = ".facefusion-jobs"  # video job documents, parts and claims, beside the outputs by default


def bucket_prefix(uri: str) -> str:
    """`s3://bucket/fused/{name}` -> `s3://bucket/`: the part of a URI that an allow-list entry names."""
    parts = urlsplit(uri.split("{", 1)[0])
    if parts.scheme in ("file", "local"):
        return f"file://{os.path.dirname(parts.path.rstrip('/') or '/')}/"
    return f"{parts.scheme}://{parts.netloc}/" if parts.netloc else f"{parts.scheme}://"


def default_jobs_uri(output_template: str | None) -> str | None:
    """Where video job documents live when VIDEO_JOBS_URI is unset: a `.facefusion-jobs/` folder in the
    folder of OUTPUT_URI's fixed part (`s3://out/fused/{stem}.jpg` -> `s3://out/fused/.facefusion-jobs/`)."""
    if not output_template:
        return None
    fixed = output_template.split("{", 1)[0]
    folder = fixed if fixed.endswith("/") else fixed.rsplit("/", 1)[0] + "/"
    return folder + JOBS_FOLDER + "/" if "://" in folder else None


def default_video_output_uri(output_template: str | None) -> str | None:
    """VIDEO_OUTPUT_URI when unset: OUTPUT_URI with its extension swapped for `.mp4`
    (`s3://out/fused/{stem}.jpg` -> `s3://out/fused/{stem}.mp4`)."""
    if not output_template:
        return None
    head, _, last = output_template.rpartition("/")
    stem = last.rsplit(".", 1)[0] if "." in last and not last.endswith("}") else last
    return f"{head}/{stem}.mp4"


def default_max_request_bytes(max_image_bytes: int) -> int:
    """Three images as base64 in JSON (4/3 each, so 4x one image) plus 1 MiB for the rest; this also
    covers multipart with three raw images (3x plus the parts' headers)."""
    return 4 * max_image_bytes + (1 << 20)


@dataclass(frozen=True)
class FunctionConfig:
    auth_token: str | None = None
    allowed_prefixes: tuple[str, ...] = ("memory://",)
    source_face_uri: str | None = None
    output_uri: str | None = None
    input_uri_template: str | None = None
    max_inflight: int = 2
    reply_events: bool = True
    storage_timeout_s: float = 30.0
    allowed_output_prefixes: tuple[str, ...] | None = None  # None: the fixed prefix of OUTPUT_URI only
    lease_ttl_s: float = 180.0
    max_batch: int = 32  # entries per delivery; beyond it 413 before any entry runs
    request_wait_s: float = 0.0
    drain_seconds: float = 2.0
    drain_max_seconds: float = 25.0
    service: str = "facefusion"
    revision: str = "local"
    # the server (function/serve.py) and its front door (function/front_door.py)
    port: int = 8080
    workers: int = 1
    log_level: str = "warning"
    max_request_bytes: int = default_max_request_bytes(DEFAULT_MAX_IMAGE_BYTES)  # 81 MiB
    max_request_line: int = 8190
    max_headers: int = 100
    max_header_bytes: int = 65536
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_s: int = 5
    max_connections: int = 1000
    # MAX_CONNECTION_REQUESTS: answers on one keep-alive connection before it is closed (`Connection:
    # close` on the last): with WORKERS > 1 on one socket, a connection stays with the worker that
    # accepted it, so without a cap the connections a proxy opened while one worker served alone (the
    # first, while its siblings start) would keep them all there; 0: no cap
    max_connection_requests: int = 100
    threads: int = 8
    # video (README, Video; docs/video.md)
    video_limits: VideoLimits = field(default_factory=VideoLimits)  # VIDEO_MAX_SECONDS, _PIXELS, _SEGMENT_SECONDS
    video_max_sync_seconds: float = 10.0
    max_video_bytes: int = DEFAULT_MAX_VIDEO_BYTES
    video_jobs_uri: str | None = None
    video_output_uri: str | None = None
    k_sink: str | None = None
    ce_overrides: str | None = None
    sink_retries: int = 5
    problems: tuple[str, ...] = ()

    @property
    def max_multipart_bytes(self) -> int:
        """A multipart body may carry a video `target` (up to MAX_VIDEO_BYTES) besides the images and
        fields MAX_REQUEST_BYTES allows for."""
        return self.max_request_bytes + self.max_video_bytes

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FunctionConfig:
        read = EnvReader(env)
        # the pipeline's video limits (VIDEO_MAX_SECONDS ...), read once: a bad value is this configuration's
        # problem, named by /readyz at start (so no request meets it)
        video_limits = VideoLimits.read(read)
        source = read.str("SOURCE_FACE_URI")
        output = read.str("OUTPUT_URI")
        allowed = read.list("ALLOWED_URI_PREFIXES")
        if allowed is None:
            allowed = ("memory://", *(bucket_prefix(u) for u in (source, output) if u))
        storage_timeout = read.float("STORAGE_TIMEOUT_S", 30.0, minimum=0.001)
        workers = read.int("WORKERS", 1, minimum=1)
        return cls(
            auth_token=read.str("AUTH_TOKEN"),
            allowed_prefixes=allowed,
            source_face_uri=source,
            output_uri=output,
            input_uri_template=read.str("INPUT_URI_TEMPLATE"),
            max_inflight=read.int("MAX_INFLIGHT", 2, minimum=1),
            reply_events=read.bool("REPLY_EVENTS", True),
            storage_timeout_s=storage_timeout,
            allowed_output_prefixes=read.list("ALLOWED_OUTPUT_PREFIXES"),
            # a lease outlives a stuck read, the fusion and a stuck write; a pod killed mid-fusion holds
            # its objects no longer than this
            lease_ttl_s=read.float("LEASE_TTL_S", 2 * storage_timeout + FUSION_BUDGET_S, minimum=1),
            max_batch=read.int("MAX_BATCH", 32, minimum=1),
            # WORKERS > 1 share one socket: the first worker takes connections while it loads (its siblings
            # only once they are ready, function/serve.py), and a request that reaches it then waits
            request_wait_s=read.float("READY_WAIT_S", 0.0 if workers == 1 else 30.0, minimum=0),
            drain_seconds=read.float("DRAIN_SECONDS", 2.0, minimum=0),
            drain_max_seconds=read.float("DRAIN_MAX_SECONDS", 25.0, minimum=0),
            service=read.str("K_SERVICE", "facefusion"),
            revision=read.str("K_REVISION", "local"),
            port=read.int("PORT", 8080, minimum=0),
            workers=workers,
            log_level=read.choice("UVICORN_LOG_LEVEL", "warning", ("critical", "error", "warning", "info", "debug", "trace")),
            max_request_bytes=read.int("MAX_REQUEST_BYTES", default_max_request_bytes(
                read.int("MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES, minimum=1)), minimum=1024),
            max_request_line=read.int("MAX_REQUEST_LINE", 8190, minimum=256),
            max_headers=read.int("MAX_HEADERS", 100, minimum=10),
            max_header_bytes=read.int("MAX_HEADER_BYTES", 65536, minimum=4096),
            header_timeout_s=read.float("HEADER_TIMEOUT_S", 10.0, minimum=0.1),
            body_timeout_s=read.float("BODY_TIMEOUT_S", 30.0, minimum=0.1),
            keepalive_s=read.int("KEEPALIVE_S", 5, minimum=1),
            max_connections=read.int("MAX_CONNECTIONS", 1000, minimum=1),
            max_connection_requests=read.int("MAX_CONNECTION_REQUESTS", 100, minimum=0),
            threads=read.int("THREADS", 8, minimum=1),
            video_limits=video_limits,
            video_max_sync_seconds=read.float("VIDEO_MAX_SYNC_SECONDS", 10.0, minimum=0),
            max_video_bytes=read.int("MAX_VIDEO_BYTES", DEFAULT_MAX_VIDEO_BYTES, minimum=1024),
            video_jobs_uri=read.str("VIDEO_JOBS_URI") or default_jobs_uri(output),
            video_output_uri=read.str("VIDEO_OUTPUT_URI") or default_video_output_uri(output),
            k_sink=read.str("K_SINK"),
            ce_overrides=read.str("K_CE_OVERRIDES"),
            sink_retries=read.int("SINK_RETRIES", 5, minimum=0),
            problems=tuple(read.problems),
        )
