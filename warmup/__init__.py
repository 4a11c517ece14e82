"""When the serving process is ready: load the model set, exercise every model, then flip readiness.

This is the only place that decides readiness. `python -m function.serve` starts it first, before it
imports the app (`prestart`: loading overlaps the imports), and tells it when the app is built
(`app_built`): the process turns ready no earlier, so `cold_start` is the time until the process can
answer; a fork hook starts it in a forked worker (gunicorn forks after importing the app, and CUDA must
not be touched before the fork); a process that does neither starts it on its first request.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline import ConfigError, Fuser, ModelSetMissing, PipelineError, Settings, cuda_context, load_fuser
from pipeline.config import raise_problems

from .config import WarmupConfig

log = logging.getLogger("facefusion.warmup")


def process_start_time(pid: int | str = "self") -> float:
    """When a process (this one by default) started, as a Unix time: the kernel's start time
    (/proc/PID/stat, in clock ticks since boot) set against /proc/uptime, so `cold_start` counts the
    interpreter and every import (on an H100 about 1.2 s that a clock started by this module missed).
    Now, where /proc cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        age = uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()
    return time.time() - max(age, 0.0)


PROCESS_START = process_start_time()
RETRY_MAX_S = 60.0
APP_WAIT_S = 300.0  # a prestarted warm-up waits this long at most for the app to be built


@dataclass
class Readiness:
    """Readiness of this process: `ready`, or the reason it is not, plus cold-start timings."""

    state: str = "starting"  # starting | loading | waiting (for the model set) | warming | ready | failed
    reason: str = ""
    timings_s: dict[str, float] = field(default_factory=dict)
    providers: dict[str, str] = field(default_factory=dict)  # role -> the execution provider it runs on
    cuda_graphs: dict[str, str] = field(default_factory=dict)  # role -> CUDA graph state (roles CUDA_GRAPHS names)
    cpu_threads: int = 0  # CPU_THREADS as this process applied it (0: each native pool's own default)
    ready_event: threading.Event = field(default_factory=threading.Event)  # a verdict: ready, or failed (maybe retrying)
    done: threading.Event = field(default_factory=threading.Event)  # the warm-up has stopped trying

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def as_dict(self) -> dict:
        body: dict = {"status": self.state, "timings_s": dict(self.timings_s)}  # a copy: the batch warm-up adds to it
        if self.providers:
            body["providers"] = self.providers
        if self.cuda_graphs:
            body["cuda_graphs"] = self.cuda_graphs
        if self.cpu_threads:
            body["cpu_threads"] = self.cpu_threads
        if self.reason:
            body["reason"] = self.reason
        return body


def _warm_batches(fuser: Fuser, readiness: Readiness) -> None:
    """Every batch size of the micro-batched models once, after the pod turned ready: the first run of a
    shape costs ~100 ms on CUDA (pipeline/batching.py), too long to hold readiness for, so requests
    meanwhile are served and the first of each size pays it. A failure here only logs: the sizes are
    then warmed by traffic, as before."""
    started = time.time()
    try:
        warmed = fuser.models.warm_batches()
    except Exception:
        log.exception("warming the batch sizes failed; requests will warm them")
        return
    readiness.timings_s["batch_warmup"] = round(time.time() - started, 3)
    log.info("batch sizes warmed in %.2f s: %s", time.time() - started, warmed)


class Warmup:
    """Owns the process's Fuser and its readiness."""

    def __init__(self, settings: Settings | None = None, exercise: bool | None = None,
                 problems: tuple[str, ...] = (), wait_for_models: bool = True) -> None:
        """`settings` and `exercise` default to the environment's; `problems` are configuration problems
        found by the caller (the function's own settings), which keep the process not ready.

        With `wait_for_models`, a model set that is not there yet (no manifest: prefetch writes it
        last) is looked for again every MODEL_WAIT_S, so a server started before its models becomes
        ready once they appear; readiness says `waiting` meanwhile. Any other failure is final."""
        self.settings = settings
        self.exercise = exercise
        self.problems = problems
        self.wait_for_models = wait_for_models
        # called with the readiness just before it turns ready, so what they record (metrics) is in
        # place before /readyz says 200; added with `add_ready_hook`
        self.on_ready: list[Callable[[Readiness], None]] = []
        self._hooks_lock = threading.Lock()
        self._app_built: threading.Event | None = None  # set by `prestart`: ready no earlier than the app
        self.readiness = Readiness()
        self.fuser: Fuser | None = None
        self._started_pid: int | None = None
        self._lock = threading.Lock()

    def add_ready_hook(self, hook: Callable[[Readiness], None]) -> None:
        """Call `hook` with the readiness just before the process turns ready, or now if it already is: a
        warm-up started before the app was imported (`prestart`) may be done before the app adds its hooks."""
        with self._hooks_lock:
            self.on_ready.append(hook)
            if not self.readiness.ready:
                return
            try:
                hook(self.readiness)
            except Exception as exc:  # as in the warm-up thread: not ready, with the reason, not a failed import
                self.readiness.state, self.readiness.reason = "failed", f"{type(exc).__name__}: {exc}"
                log.exception("not ready")

    def app_built(self) -> None:
        """The serving process has imported and built its app (function/serve.py), so it can answer: the
        time is shown in `/readyz` (`app_built`), and a prestarted warm-up turns ready no earlier."""
        self.readiness.timings_s["app_built"] = round(time.time() - PROCESS_START, 3)
        if self._app_built is not None:
            self._app_built.set()

    def ensure_started(self) -> None:
        """Start loading in a background thread, once per process."""
        with self._lock:
            if self._started_pid == os.getpid():
                return
            self._started_pid = os.getpid()
            self.readiness = Readiness()
            threading.Thread(target=self._run, name="warmup", daemon=True).start()

    def _run(self) -> None:
        readiness = self.readiness
        started = time.time()
        readiness.timings_s["load_start"] = round(started - PROCESS_START, 3)  # when loading began
        try:
            readiness.state = "loading"
            config = WarmupConfig.from_env()
            raise_problems([*self.problems, *config.problems])
            settings = self.settings or Settings.from_env()
            fuser, started = self._load(settings, config.model_wait_s)
            readiness.timings_s["model_load"] = round(time.time() - started, 3)
            made = cuda_context.early()
            if made is not None and made.ready is not None:  # when the GPU's context, made beside the imports, was
                readiness.timings_s["cuda_context"] = round(made.ready - PROCESS_START, 3)  # there (cf. load_start)
            readiness.providers = {role: names[0] for role, names in fuser.models.active.items()}
            readiness.cpu_threads = settings.cpu_threads
            for line in fuser.load_log:
                log.info(line)
            if config.exercise if self.exercise is None else self.exercise:
                readiness.state = "warming"
                t = time.time()
                fuser.exercise()
                readiness.timings_s["warmup"] = round(time.time() - t, 3)
            if fuser.models.graphed:  # after the first runs, whose shapes they capture (none without them)
                t = time.time()
                fuser.models.capture_graphs()
                readiness.timings_s["cuda_graphs"] = round(time.time() - t, 3)
            readiness.cuda_graphs = fuser.models.cuda_graphs  # a snapshot: the property builds a new dict
            self.fuser = fuser
            if self._app_built is not None:  # prestarted: the process can answer once its app is built
                self._app_built.wait(APP_WAIT_S)
            readiness.timings_s["cold_start"] = round(time.time() - PROCESS_START, 3)
            with self._hooks_lock:
                for hook in self.on_ready:
                    hook(readiness)
                readiness.state = "ready"
            log.info("ready: %s", readiness.timings_s)
            if fuser.models.batchers and (config.exercise if self.exercise is None else self.exercise):
                threading.Thread(target=_warm_batches, args=(fuser, readiness), name="batch-warmup", daemon=True).start()
        except (PipelineError, ConfigError) as exc:
            readiness.state, readiness.reason = "failed", str(exc)
            log.error("not ready: %s", exc)
        except Exception as exc:  # any failure keeps the pod not-ready with the reason visible
            readiness.state, readiness.reason = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("not ready")
        finally:
            readiness.ready_event.set()
            readiness.done.set()

    def _load(self, settings: Settings, retry_s: float) -> tuple[Fuser, float]:
        """The loaded Fuser and when its successful load started.

        A set that is not there yet is looked for every `retry_s` (state `waiting`). A set that fails to
        load (a damaged file, a runtime that cannot create a session) stays `failed` with its reason,
        and is tried again with back-off up to RETRY_MAX_S, so the pod recovers once the cause is
        fixed (a prefetch repairs the file, say) without a restart."""
        readiness = self.readiness
        backoff = retry_s
        while True:
            started = time.time()
            try:
                fuser = load_fuser(settings)
                readiness.state, readiness.reason = "loading", ""
                return fuser, started
            except ModelSetMissing as exc:
                if not self.wait_for_models:
                    raise
                if readiness.state != "waiting":
                    log.warning("waiting for the model set: %s; looking again every %g s", exc.message, retry_s)
                readiness.state, readiness.reason = "waiting", f"{exc.message} (looking again every {retry_s:g} s)"
                time.sleep(retry_s)
            except PipelineError as exc:
                if not self.wait_for_models:
                    raise
                log.error("not ready: %s; trying again in %g s", exc.message, backoff)
                readiness.state, readiness.reason = "failed", f"{exc.message} (trying again in {backoff:g} s)"
                readiness.ready_event.set()  # a verdict for whoever waits; a later success still turns ready
                time.sleep(backoff)
                backoff = min(backoff * 2, RETRY_MAX_S)

    def wait(self, timeout: float) -> bool:
        return self.readiness.ready_event.wait(timeout) and self.readiness.ready


_PRESTARTED: list[Warmup] = []


def prestart(warmup: Warmup) -> Warmup:
    """Start `warmup` now, before the web stack (Flask, functions-framework, uvicorn, the function's own
    modules) is imported, and keep it for the app to adopt (`adopt_prestarted`).

    Why: loading and first runs are native work that releases the GIL (on an H100 1.4-1.7 s of session
    creation and first CUDA runs), and importing the web stack is Python work (~0.5-1 s); one after the
    other they add up, side by side the start takes the longer of the two. `python -m function.serve`
    calls this, and `app_built` once the app is built: the warm-up turns ready (and takes `cold_start`) no
    earlier, since nothing answers before. A process that imports the function any other way (tests,
    gunicorn) builds its own."""
    warmup._app_built = threading.Event()  # ready, and `cold_start` taken, once the app is built too
    warmup.ensure_started()
    _PRESTARTED.append(warmup)
    return warmup


def adopt_prestarted() -> Warmup | None:
    """The warm-up `prestart` started in this process, once (the next caller builds its own)."""
    return _PRESTARTED.pop() if _PRESTARTED else None
