"""The function's settings from the environment (DESIGN.md, Configuration)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit


def _bool(value: str | None, default: bool) -> bool:
    if value is None or not value.strip():
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def bucket_prefix(uri: str) -> str:
    """`s3://bucket/fused/{name}` -> `s3://bucket/`: the part of a URI that an allow-list entry names."""
    parts = urlsplit(uri.split("{", 1)[0])
    if parts.scheme in ("file", "local"):
        return f"file://{os.path.dirname(parts.path.rstrip('/') or '/')}/"
    return f"{parts.scheme}://{parts.netloc}/" if parts.netloc else f"{parts.scheme}://"


@dataclass(frozen=True)
class FunctionConfig:
    auth_token: str | None
    allowed_prefixes: tuple[str, ...]
    source_face_uri: str | None
    output_uri: str | None
    input_uri_template: str | None
    max_inflight: int
    reply_events: bool
    storage_timeout_s: float
    request_wait_s: float
    service: str
    revision: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FunctionConfig:
        env = os.environ if env is None else env
        source = env.get("SOURCE_FACE_URI") or None
        output = env.get("OUTPUT_URI") or None
        raw_allowed = env.get("ALLOWED_URI_PREFIXES")
        if raw_allowed is not None and raw_allowed.strip():
            allowed = tuple(p.strip() for p in raw_allowed.split(",") if p.strip())
        else:
            allowed = ("memory://", *(bucket_prefix(u) for u in (source, output) if u))
        max_inflight = int(env.get("MAX_INFLIGHT") or 2)
        if max_inflight < 1:
            raise ValueError("MAX_INFLIGHT must be at least 1")
        return cls(
            auth_token=env.get("AUTH_TOKEN") or None,
            allowed_prefixes=allowed,
            source_face_uri=source,
            output_uri=output,
            input_uri_template=env.get("INPUT_URI_TEMPLATE") or None,
            max_inflight=max_inflight,
            reply_events=_bool(env.get("REPLY_EVENTS"), True),
            storage_timeout_s=float(env.get("STORAGE_TIMEOUT_S") or 30),
            request_wait_s=float(env.get("READY_WAIT_S") or 0),
            service=env.get("K_SERVICE", "facefusion"),
            revision=env.get("K_REVISION", "local"),
        )
