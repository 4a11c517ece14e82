"""The GPU's primary context made as a serving process starts (pipeline/cuda_context.py).

No GPU here: a stand-in NVIDIA driver (a small C library with libcuda's entry points, built with the
system's C compiler) records the calls it gets, can take its time in cuInit and can fail. It proves
what the real driver cannot show on a CPU machine: which device is asked for, that Python keeps
running while the driver works, that a failure is reported and never raised, and that only serving
processes (not the WORKERS supervisor) make a context. Outside CI the tests skip without a compiler.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from pipeline import cuda_context

from .conftest import REPO
from .server import FunctionServer

FAKE_DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void note(const char *call, int value) {
    const char *path = getenv("FAKE_CUDA_LOG");
    FILE *fh = path ? fopen(path, "a") : NULL;
    if (fh) { fprintf(fh, "%d %s %d\n", (int)getpid(), call, value); fclose(fh); }
}
int cuInit(unsigned int flags) {
    note("cuInit", (int)flags);
    const char *ms = getenv("FAKE_CUDA_INIT_MS");
    if (ms) usleep(atoi(ms) * 1000);
    return getenv("FAKE_CUDA_FAIL") ? 100 : 0;
}
int cuDeviceGet(int *device, int ordinal) { note("cuDeviceGet", ordinal); *device = ordinal; return 0; }
int cuDevicePrimaryCtxRetain(void **context, int device) {
    note("cuDevicePrimaryCtxRetain", device); *context = (void *)1; return 0;
}
int cuGetErrorName(int status, const char **name) {
    *name = status == 100 ? "CUDA_ERROR_NO_DEVICE" : "CUDA_ERROR_UNKNOWN"; return 0;
}
"""


@pytest.fixture(scope="module")
def fake_driver(tmp_path_factory) -> Path:
    """A folder holding the stand-in `libcuda.so.1`."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("no C compiler to build the stand-in CUDA driver (.ci/run installs gcc)")
        pytest.skip("no C compiler to build the stand-in CUDA driver")
    folder = tmp_path_factory.mktemp("fake-cuda")
    (folder / "fake_cuda.c").write_text(FAKE_DRIVER)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(folder / "libcuda.so.1"), str(folder / "fake_cuda.c")],
                   check=True, capture_output=True)
    return folder


@pytest.fixture
def driver_env(fake_driver, tmp_path, monkeypatch) -> Path:
    """The stand-in's call log; the in-process context list starts empty and is restored after."""
    log = tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_CUDA_LOG", str(log))
    monkeypatch.setattr(cuda_context, "_EARLY", [])
    return log


def _calls(log: Path) -> list[str]:
    return [line.split(" ", 1)[1] for line in log.read_text().splitlines()] if log.exists() else []


def test_the_primary_context_is_retained_on_the_configured_device(fake_driver, driver_env):
    made = cuda_context.start(2, library=str(fake_driver / "libcuda.so.1"))
    assert made.done.wait(10)
    assert made.error is None and made.seconds is not None and made.seconds >= 0
    assert _calls(driver_env) == ["cuInit 0", "cuDeviceGet 2", "cuDevicePrimaryCtxRetain 2"]
    assert cuda_context.early() is made


def test_python_runs_while_the_driver_initialises(fake_driver, driver_env, monkeypatch):
    """The point of starting early: the imports that follow go on while the driver works (ctypes lets
    go of the GIL). The stand-in's cuInit takes 1 s; Python work of a few ms finishes long before."""
    monkeypatch.setenv("FAKE_CUDA_INIT_MS", "1000")
    made = cuda_context.start(0, library=str(fake_driver / "libcuda.so.1"))
    deadline = time.monotonic() + 10
    while "cuInit 0" not in _calls(driver_env) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert "cuInit 0" in _calls(driver_env)
    total = sum(i * i for i in range(200_000))  # pure Python: needs the GIL throughout
    assert total > 0 and not made.done.is_set()  # done before the driver: it did not hold the GIL
    assert made.done.wait(10) and made.error is None


def test_a_missing_or_failing_driver_is_reported_never_raised(fake_driver, driver_env, monkeypatch, tmp_path):
    missing = cuda_context.start(0, library=str(tmp_path / "no-such" / "libcuda.so.1"))
    assert missing.done.wait(10) and missing.seconds is None and "no-such" in (missing.error or "")
    monkeypatch.setenv("FAKE_CUDA_FAIL", "1")
    failing = cuda_context.start(0, library=str(fake_driver / "libcuda.so.1"))
    assert failing.done.wait(10) and failing.seconds is None
    assert failing.error == "cuInit failed: CUDA_ERROR_NO_DEVICE (100)"
    assert _calls(driver_env) == ["cuInit 0"]  # nothing after the failure


def test_only_settings_that_run_cuda_start_a_context(tmp_path, monkeypatch):
    monkeypatch.setattr(cuda_context, "_EARLY", [])
    """`cuda` or `tensorrt` do; `cpu` never (unless JPEG goes to the GPU); `auto` only where the installed
    runtime is a CUDA build, told by its CUDA provider's library, without importing the runtime."""
    assert cuda_context.runs_cuda("cuda") and cuda_context.runs_cuda("TensorRT, cpu")
    assert not cuda_context.runs_cuda("cpu")
    assert cuda_context.start_early({"EXECUTION_PROVIDERS": "cpu"}) is None
    assert cuda_context.start_early({"EXECUTION_PROVIDERS": "cuda", "CUDA_EARLY_CONTEXT": "off"}) is None
    made = cuda_context.start_early({"EXECUTION_PROVIDERS": "cpu", "IMAGE_CODEC": "nvimgcodec"})
    assert made is not None and made.done.wait(10)  # no driver here: it says so, and nothing else happens
    assert cuda_context.start_early({"EXECUTION_PROVIDERS": "cuda", "CUDA_DEVICE_ID": "-1"}) is None  # bad: the warm-up says so
    gpu_build = tmp_path / "onnxruntime"
    (gpu_build / "capi").mkdir(parents=True)
    (gpu_build / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (gpu_build / "capi" / "libonnxruntime_providers_cuda.so").write_bytes(b"")
    code = "from pipeline import cuda_context as c; print(c.runs_cuda('auto'), c.runs_cuda(''))"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO, env=env)
    assert out.stdout.split() == ["True", "True"]


@pytest.mark.skipif(cuda_context.gpu_runtime_installed(), reason="onnxruntime-gpu would hand the stand-in driver to CUDA")
def test_each_serving_process_makes_its_context_and_the_supervisor_none(fake_driver, model_root, tmp_path):
    """WORKERS=2 with EXECUTION_PROVIDERS=cuda and CUDA_DEVICE_ID=1: each worker retains device 1's
    context as it starts; the supervisor, which serves nothing, makes none. (This runtime has no CUDA
    provider, so the workers then refuse readiness naming it: strict providers, as before.)"""
    log = tmp_path / "calls.log"
    srv = FunctionServer({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "c"), "WORKERS": "2",
                          "EXECUTION_PROVIDERS": "cuda", "CUDA_DEVICE_ID": "1", "FAKE_CUDA_LOG": str(log),
                          "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(fake_driver), os.environ.get("LD_LIBRARY_PATH")]))})
    try:  # FunctionServer waited for a verdict: here, failed
        answer = requests.get(srv.url + "/readyz", timeout=5)
        body = answer.json()
        assert answer.status_code == 503 and body["status"] == "failed", body
        # one line that says what to do, no exception name (/readyz is public) and no traceback in the log
        reason = body.get("reason", "")
        assert reason.startswith("invalid configuration: EXECUTION_PROVIDERS asks for ['CUDAExecutionProvider']"), body
        assert "onnxruntime-gpu" in reason
        deadline = time.monotonic() + 60
        while len(_calls(log)) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = [line.split(" ", 1) for line in log.read_text().splitlines()] if log.exists() else []
    finally:
        srv.stop()
    assert "Traceback" not in srv.log_path.read_text(errors="replace")
    pids = {pid for pid, _ in lines}
    assert len(pids) == 2 and str(srv.proc.pid) not in pids
    for pid in pids:
        assert [call for p, call in lines if p == pid] == ["cuInit 0", "cuDeviceGet 1", "cuDevicePrimaryCtxRetain 1"]


def test_readiness_shows_when_the_early_context_was_there(fake_driver, driver_env, model_root, tmp_path):
    """/readyz's `timings_s` gains `cuda_context` where the context was made early: when it was there, in
    seconds after the process started, as `load_start`, so the two say whether the sessions waited for it."""
    from pipeline import Settings
    from warmup import PROCESS_START, Warmup

    made = cuda_context.start(0, library=str(fake_driver / "libcuda.so.1"))
    assert made.done.wait(10) and made.ready is not None
    warm = Warmup(settings=Settings.from_env({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "c")}))
    warm.ensure_started()
    assert warm.wait(120), warm.readiness.reason
    assert warm.readiness.as_dict()["timings_s"]["cuda_context"] == round(made.ready - PROCESS_START, 3)
