"""No silent CPU fallback: a session that does not run on the provider EXECUTION_PROVIDERS asked for is
refused, and the provider of every model is reported."""

from __future__ import annotations

import os
import subprocess
import sys

import onnxruntime as ort
import pytest
import requests

from pipeline import ProviderUnavailable, Settings, load_fuser
from warmup import Warmup

from .conftest import REPO
from .server import FunctionServer


@pytest.fixture
def cuda_that_fails_to_load(monkeypatch):
    """What onnxruntime-gpu does when a CUDA library is missing: CUDA is listed as available, the session
    is created anyway, and it runs on the CPU with only a warning."""
    listed = [*ort.get_available_providers(), "CUDAExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)


def test_a_provider_that_fails_to_load_is_refused(model_root, tmp_path, cuda_that_fails_to_load):
    with pytest.warns(UserWarning), pytest.raises(ProviderUnavailable, match=r"detector .*CPUExecutionProvider.*CUDAExecutionProvider"):
        load_fuser(Settings(model_path=model_root, execution_providers="cuda,cpu", cache_path=tmp_path / "c"))


def test_readiness_refuses_a_silent_cpu_fallback(model_root, tmp_path, cuda_that_fails_to_load, monkeypatch):
    monkeypatch.setenv("MODEL_WAIT_S", "30")
    warm = Warmup(settings=Settings(model_path=model_root, execution_providers="cuda,cpu", cache_path=tmp_path / "c"),
                  exercise=False)
    with pytest.warns(UserWarning):
        warm.ensure_started()
        assert warm.readiness.ready_event.wait(60)
    assert warm.readiness.state == "failed" and "CUDAExecutionProvider" in warm.readiness.reason
    assert warm.fuser is None


def test_auto_on_a_cpu_runtime_serves_and_reports_each_models_provider(model_root, tmp_path):
    server = FunctionServer({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "c")})
    try:
        ready = requests.get(server.url + "/readyz", timeout=5).json()
        assert ready["providers"] == {role: "CPUExecutionProvider"
                                      for role in ("detector", "recognizer", "swapper", "enhancer")}
        assert "cuda_graphs" not in ready  # CUDA_GRAPHS unset: nothing to say
        text = requests.get(server.url + "/metrics", timeout=5).text
        assert 'facefusion_model_provider_info{provider="CPUExecutionProvider",role="swapper"} 1.0' in text
    finally:
        server.stop()


def test_graphs_are_keyed_by_the_gpu_model_not_the_cards_uuid():
    """A `warmup prepare` Job and each serving pod see different card UUIDs in NVIDIA_VISIBLE_DEVICES;
    their optimised graphs must share one key, or every pod rebuilds them at start."""
    from pipeline.loader import graph_recipe

    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    job = graph_recipe(Settings.from_env({"NVIDIA_VISIBLE_DEVICES": "GPU-1b2c"}), cuda)
    pod = graph_recipe(Settings.from_env({"NVIDIA_VISIBLE_DEVICES": "GPU-9f8e"}), cuda)
    assert job.token() == pod.token()
    named = graph_recipe(Settings.from_env({"NVIDIA_GPU_NAME": "NVIDIA H100 80GB HBM3"}), cuda)
    assert named.gpu == "NVIDIA H100 80GB HBM3"  # the operator's name wins over what the device says


def test_cpu_threads_sizes_every_session_pool_and_opencv(model_root, tmp_path):
    """CPU_THREADS sizes the process's native pools: each session's intra-op pool and OpenCV's (which is
    process-wide, so it is put back for the tests that follow)."""
    import cv2

    before = cv2.getNumThreads()
    try:
        fuser = load_fuser(Settings(model_path=model_root, cache_path=tmp_path / "c", cpu_threads=1))
        sessions = {role: model.session for role, model in fuser.models.models.items()}
        assert {role: s.get_session_options().intra_op_num_threads for role, s in sessions.items()} == \
            dict.fromkeys(sessions, 1)
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)
    default = load_fuser(Settings(model_path=model_root, cache_path=tmp_path / "c"))
    assert all(m.session.get_session_options().intra_op_num_threads == 0 for m in default.models.models.values())


def test_asking_a_cpu_runtime_for_cuda_is_a_one_line_configuration_error(model_root, tmp_path):
    """`warmup prepare` (the init container) with EXECUTION_PROVIDERS=cuda where only the CPU build of
    ONNX Runtime is installed: exit 1 with one line naming the setting and what to install, not a traceback."""
    env = {**os.environ, "MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "c"), "EXECUTION_PROVIDERS": "cuda"}
    out = subprocess.run([sys.executable, "-m", "warmup", "prepare"], capture_output=True, text=True, cwd=REPO, env=env)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "EXECUTION_PROVIDERS asks for ['CUDAExecutionProvider']" in out.stderr and "onnxruntime-gpu" in out.stderr
