"""The process-wide objects of the function: configuration, warm-up, fusion limiter, allow-lists.

main.py builds one `Runtime` when functions-framework imports it and hands it to the request and
event handlers, so no other module reads the environment or keeps its own globals (a test that loads
the function twice with other settings gets two independent runtimes).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import Fuser, ImageLimits
from warmup import Warmup, adopt_prestarted

from .config import FunctionConfig
from .fusion import InflightLimiter
from .problems import Problem
from .uris import AllowList, normalise


def output_prefix(template: str | None) -> str | None:
    """The fixed part of OUTPUT_URI before its first placeholder: objects under it are our outputs."""
    if not template:
        return None
    fixed = template.split("{", 1)[0]
    try:
        norm = normalise(fixed)
    except Problem:
        return None
    return norm + "/" if fixed.endswith("/") and not norm.endswith("/") else norm


def output_allow_list(config: FunctionConfig, prefix: str | None) -> AllowList:
    """Where outputs may be written: ALLOWED_OUTPUT_PREFIXES, else the fixed prefix of OUTPUT_URI only,
    else nowhere. (Every output must also fall under ALLOWED_URI_PREFIXES.)"""
    if config.allowed_output_prefixes is not None:
        return AllowList(config.allowed_output_prefixes, "ALLOWED_OUTPUT_PREFIXES", "output-not-allowed")
    return AllowList.exact((prefix,) if prefix else (), "ALLOWED_OUTPUT_PREFIXES (default: OUTPUT_URI's fixed prefix)",
                           "output-not-allowed")


def _normalised(uri: str | None) -> str | None:
    try:
        return normalise(uri) if uri else None
    except Problem:
        return None


@dataclass
class Runtime:
    config: FunctionConfig
    warmup: Warmup
    limiter: InflightLimiter
    allow: AllowList
    allow_output: AllowList
    source_face: str | None  # SOURCE_FACE_URI normalised once (an output may never overwrite it)
    # where this function writes on its own (OUTPUT_URI's, VIDEO_OUTPUT_URI's fixed parts, VIDEO_JOBS_URI):
    # a storage event for an object there is one of our outputs, never new work (no loops)
    own_prefixes: tuple[str, ...] = ()

    @classmethod
    def from_env(cls) -> Runtime:
        config = FunctionConfig.from_env()
        prefix = output_prefix(config.output_uri)
        # the warm-up reads the pipeline's settings in its own thread: a bad value fails readiness, not import;
        # `python -m function.serve` started it before importing the app (warmup.prestart)
        warmup = adopt_prestarted() or Warmup(problems=config.problems)
        return cls(config=config, warmup=warmup, limiter=InflightLimiter(config.max_inflight),
                   allow=AllowList(config.allowed_prefixes),
                   allow_output=output_allow_list(config, prefix), source_face=_normalised(config.source_face_uri),
                   own_prefixes=tuple(p for p in (prefix, output_prefix(config.video_output_uri),
                                                  output_prefix(config.video_jobs_uri)) if p))

    def fuser(self) -> Fuser:
        """The loaded Fuser, or a 503 problem saying why there is none yet."""
        self.warmup.ensure_started()
        if not self.warmup.readiness.ready and self.config.request_wait_s > 0:
            self.warmup.wait(self.config.request_wait_s)
        readiness = self.warmup.readiness
        if readiness.state == "failed":
            raise Problem(503, "not-ready", f"not ready: {readiness.reason}", retry_after=30)  # settings or models
        if not readiness.ready or self.warmup.fuser is None:
            raise Problem(503, "not-ready", f"models are not ready yet ({readiness.state})", retry_after=2)
        return self.warmup.fuser

    def max_image_bytes(self) -> int:
        """MAX_IMAGE_BYTES as the loaded pipeline reads it (its default until then: no fusion runs before)."""
        fuser = self.warmup.fuser
        return (fuser.limits if fuser else ImageLimits()).max_bytes
