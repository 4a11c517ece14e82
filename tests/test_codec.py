"""IMAGE_CODEC: OpenCV stays the default and serves the same bytes; nvImageCodec, when asked for on a machine
without it (this CPU machine), refuses readiness with the reason instead of falling back; a bad value is
refused at start; and the codec bench runs in reduced form on the CPU."""

from __future__ import annotations

import pytest
import requests

from pipeline import ConfigError, Settings
from warmup import Warmup

from .conftest import fuse_multipart, shared_file
from .server import FunctionServer


def test_the_default_codec_is_opencv_and_a_fusion_over_http_gives_the_same_bytes(model_root, tmp_path, fuser):
    assert Settings.from_env({}).image_codec == "opencv" and fuser.codec is None
    expected = fuser.fuse_bytes(shared_file("images", "obama.jpg").read_bytes(),
                                shared_file("images", "biden.jpg").read_bytes())
    server = FunctionServer({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "c")})
    try:
        r = fuse_multipart(server)
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "image/jpeg"
        assert r.content == expected.data
        # the GPU codec's counter (tests/test_codec_overflow.py) has no series with the default codec
        assert "facefusion_image_codec_images" not in requests.get(server.url + "/metrics", timeout=10).text
    finally:
        server.stop()


def test_nvimgcodec_without_the_library_refuses_readiness_naming_it(model_root, tmp_path):
    # without the package the import fails; with it but without a GPU, Decoder() does: both name the codec
    server = FunctionServer({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "c"),
                             "IMAGE_CODEC": "nvimgcodec"})
    try:
        ready = requests.get(server.url + "/readyz", timeout=5)
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "failed" and "nvImageCodec" in body["reason"] and "IMAGE_CODEC" in body["reason"]
        r = fuse_multipart(server)  # nothing is served on the CPU in its place
        assert r.status_code == 503 and "nvImageCodec" in r.json()["detail"], r.text
    finally:
        server.stop()


def test_an_invalid_image_codec_is_refused_at_start(model_root, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"IMAGE_CODEC must be one of opencv, nvimgcodec, got 'nvjpeg'"):
        Settings.from_env({"IMAGE_CODEC": "nvjpeg"})
    for name, value in {"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "c"),
                        "IMAGE_CODEC": "nvjpeg"}.items():
        monkeypatch.setenv(name, value)
    warm = Warmup(exercise=False)
    warm.ensure_started()
    assert warm.readiness.ready_event.wait(60)
    assert warm.readiness.state == "failed" and "IMAGE_CODEC" in warm.readiness.reason
    assert warm.fuser is None


def test_the_codec_bench_measures_opencv_on_the_cpu_and_says_nvimgcodec_is_unavailable(tmp_path):
    shared_file("images", "obama.jpg")
    shared_file("images", "solvay_conference_1927.png")
    from bench.codec import main

    json_path = tmp_path / "codec.json"
    result = main(["--reps", "2", "--threads", "2", "--sizes", "1080p,solvay", "--json", str(json_path)])
    assert json_path.is_file()
    rows = {(row["codec"], row["image"], row["op"]): row for row in result["rows"]}
    for image in ("1080p", "solvay"):
        for op in ("decode", "encode"):
            row = rows[("opencv", image, op)]
            assert row["ms_1_thread"] > 0 and row["per_s_threads"] > 0, row
        nv = [row for key, row in rows.items() if key[0] == "nvimgcodec" and key[1] == image]
        assert nv and all(row["error"] and "unavailable" in row["error"] for row in nv), nv
    assert "nvimgcodec" in result["table"] and "unavailable" in result["table"]
