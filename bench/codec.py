"""JPEG decode and encode, OpenCV against nvImageCodec (issue 13 item 3): keep whichever wins.

    python -m bench.codec [--reps 30] [--threads 8] [--sizes 1080p,4k,solvay] [--json out.json]

Each codec does exactly what the pipeline needs (pipeline/images.py, pipeline/gpu_jpeg.py): decode takes
JPEG bytes to a host BGR uint8 HxWx3 array with EXIF orientation applied (for nvImageCodec that includes the
device-to-host copy and, when the library cannot write BGR itself, the RGB->BGR swap); encode takes host BGR
to JPEG bytes at quality 92. Per codec and image: the median ms per image in one thread, images/s with
`--threads` threads at once (the server decodes in many request threads), and for nvImageCodec a batched
decode of `--threads` images in one `Decoder.decode` call. `nvimgcodec` is what the server runs (one
Decoder and one Encoder, each behind a lock; an image whose decoder or encoder is busy goes to OpenCV at
once), and its `gpu share` column says which fraction of the threaded run's images the GPU did;
`nvimgcodec/queue` is the same pair with every image waiting for the device (the server before overflow);
`nvimgcodec/thread` gives every thread its own pair, to show whether separate instances would scale. Decoded pixels are compared with OpenCV's decode
(mean absolute difference); the ratio column (`/opencv`) is a row's time over one-thread OpenCV's (below 1:
faster). `opencv/strips` is the pipeline's default: a large image encoded in strips on several threads
(pipeline/jpeg_strips.py), the same pixels as the one-thread encode; `IMAGE+RST` rows decode the same
pixels re-encoded with a restart marker every MCU row, in one piece (`opencv`) and cut at its markers on
several threads (`opencv/strips`, pipeline/jpeg_strip_decode.py), whose ratio is against the former.

Without nvImageCodec or a CUDA device (the CPU image, CI) the nvImageCodec rows say why they are
unavailable and OpenCV is still measured; any error of a single nvImageCodec call shows in its row.
The images: a 1920x1080 and a 3840x2160 frame with one face (bench/common.py's `frame_with_face`) and the
29-face Solvay photo (PNG in ../shared) encoded as JPEG at quality 92.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.common import SHARED, frame_with_face, median_ms, table
from pipeline.images import opencv_encode
from pipeline.jpeg_strip_decode import decode_in_strips
from pipeline.overlap import HELPER_THREADS

QUALITY = 92
SIZES = {"1080p": (1920, 1080), "4k": (3840, 2160)}


def build_images(names: list[str]) -> dict[str, bytes]:
    """JPEG bytes per requested image name (1080p, 4k, solvay)."""
    images: dict[str, bytes] = {}
    for name in names:
        if name in SIZES:
            images[name] = frame_with_face(*SIZES[name])
        elif name == "solvay":
            photo = cv2.imread(str(SHARED / "images" / "solvay_conference_1927.png"), cv2.IMREAD_COLOR)
            images[name] = cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])[1].tobytes()
        else:
            raise SystemExit(f"unknown size {name!r}; use 1080p, 4k or solvay")
    return images


class OpenCvCodec:
    """OpenCV on one thread: cv2.imdecode (BGR, EXIF applied) and one cv2.imencode of the whole image (the
    baseline every other row is compared with)."""

    name = "opencv"

    def decode(self, data: bytes) -> np.ndarray | None:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)

    def encode(self, bgr: np.ndarray, quality: int) -> bytes:
        return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


class OpenCvStrips(OpenCvCodec):
    """The pipeline's default: a large image encoded in strips on the strip threads
    (pipeline/jpeg_strips.py), and decoded in strips when it carries restart markers
    (pipeline/jpeg_strip_decode.py; one piece otherwise)."""

    name = "opencv/strips"

    def decode(self, data: bytes) -> np.ndarray | None:
        pixels = decode_in_strips(data)
        return pixels if pixels is not None else super().decode(data)

    def encode(self, bgr: np.ndarray, quality: int) -> bytes:
        return opencv_encode(bgr, quality)


def with_restarts(pixels: np.ndarray) -> bytes:
    """The image as a JPEG (quality 92, 4:2:0) with a restart marker every MCU row, as many cameras and
    this function's own answers carry them."""
    return cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, QUALITY,
                                         cv2.IMWRITE_JPEG_RST_INTERVAL, -(-pixels.shape[1] // 16)])[1].tobytes()


def open_nvimgcodec() -> tuple[Any | None, str]:
    """(the pipeline's GpuJpeg, "") or (None, why it is unavailable)."""
    try:
        from pipeline.gpu_jpeg import open_gpu_jpeg

        return open_gpu_jpeg(0), ""
    except Exception as exc:  # GpuJpegUnavailable, or anything a wrong guess about the API raises
        return None, f"unavailable: {exc}"


def sibling(checked: Any, overflow: bool = True) -> Any:
    """A GpuJpeg of its own (own Decoder and Encoder) with the checked codec's BGR/RGB choices."""
    codec = type(checked)(checked.device_id, checked.nv, overflow=overflow)
    codec.bgr_encode = checked.bgr_encode
    if not checked.bgr_decode:
        codec.use_rgb_decode()
    return codec


class QueuedGpuJpeg:
    """The server's shared pair without overflow: every image waits for the device's lock (the baseline
    that overflow to OpenCV is measured against)."""

    name = "nvimgcodec/queue"

    def __init__(self, checked: Any) -> None:
        self.codec = sibling(checked, overflow=False)
        self.counts = self.codec.counts

    def decode(self, data: bytes) -> np.ndarray | None:
        return self.codec.decode(data)

    def encode(self, bgr: np.ndarray, quality: int) -> bytes:
        return self.codec.encode(bgr, quality)


class PerThreadGpuJpeg:
    """One GpuJpeg per thread (its own Decoder and Encoder), with the checked codec's BGR/RGB choices: shows
    whether separate instances decode in parallel where the server's one shared, locked instance cannot."""

    name = "nvimgcodec/thread"

    def __init__(self, checked: Any) -> None:
        self.checked = checked
        self.local = threading.local()

    def _codec(self) -> Any:
        codec = getattr(self.local, "codec", None)
        if codec is None:
            codec = self.local.codec = sibling(self.checked)
        return codec

    def decode(self, data: bytes) -> np.ndarray | None:
        return self._codec().decode(data)

    def encode(self, bgr: np.ndarray, quality: int) -> bytes:
        return self._codec().encode(bgr, quality)


def describe(nv: Any) -> str:
    """nvImageCodec's version and how BGR comes out of it, for the header line."""
    version = getattr(nv.nv, "__version__", "?")
    return (f"{version} (CUDA {getattr(nv.nv, '__cuda_version__', '?')}), "
            f"decode {'BGR on the device' if nv.bgr_decode else 'RGB, swapped to BGR on the host'}, "
            f"encode {'BGR on the device' if nv.bgr_encode else 'swapped to RGB on the host'}")


def per_second(fn: Callable[[], Any], reps: int, threads: int) -> float:
    """Images/s with `threads` threads each running `fn` `reps` times."""
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _: fn(), range(threads)))  # warm every thread
        t = time.perf_counter()
        list(pool.map(lambda _: fn(), range(threads * reps)))
        return threads * reps / (time.perf_counter() - t)


def measure(codec: Any, op: str, data: bytes, pixels: np.ndarray, reps: int, threads: int) -> dict[str, Any]:
    """One row: median ms in one thread, images/s with `threads`, and (decode) the pixel difference."""
    row: dict[str, Any] = {"codec": codec.name, "op": op, "ms_1_thread": None, "per_s_threads": None,
                           "gpu_share": None, "batch_ms_per_image": None, "mean_abs_diff": None, "bytes": None,
                           "error": ""}
    try:
        if op == "decode":
            def fn() -> Any:
                return codec.decode(data)
            out = fn()
            if out is None:
                raise RuntimeError("decode returned None")
            if out.shape != pixels.shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
                raise RuntimeError(f"decode gave {out.shape} {out.dtype} contiguous={out.flags.c_contiguous}")
            row["mean_abs_diff"] = float(np.abs(out.astype(np.int16) - pixels.astype(np.int16)).mean())
        else:
            def fn() -> Any:
                return codec.encode(pixels, QUALITY)
            encoded = fn()
            row["bytes"] = len(encoded)
            back = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)
            row["mean_abs_diff"] = float(np.abs(back.astype(np.int16) - pixels.astype(np.int16)).mean())
        row["ms_1_thread"] = median_ms(fn, reps)
        counts = getattr(codec, "counts", None)  # GpuJpeg's images per (op, path): the threaded run's split
        before = counts.snapshot() if counts is not None else None
        row["per_s_threads"] = per_second(fn, reps, threads)
        if counts is not None and before is not None:
            after = counts.snapshot()
            gpu, cpu = (after[(op, path)] - before[(op, path)] for path in ("nvimgcodec", "opencv"))
            row["gpu_share"] = gpu / (gpu + cpu) if gpu + cpu else None
        if op == "decode" and hasattr(codec, "decode_batch"):
            blobs = [data] * threads

            def batch() -> Any:
                return codec.decode_batch(blobs)
            outs = batch()
            if any(o is None for o in outs):
                raise RuntimeError("batched decode returned None for some images")
            row["batch_ms_per_image"] = median_ms(batch, max(1, reps // 2)) / threads
    except Exception as exc:  # a wrong API guess on the GPU machine is a row, not a crash of the bench
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


def run(images: dict[str, bytes], reps: int, threads: int, nv: Any | None) -> list[dict[str, Any]]:
    """Rows for every image and op, OpenCV first; `nv` is None when nvImageCodec is unavailable."""
    opencv = OpenCvCodec()
    rows: list[dict[str, Any]] = []
    for image, data in images.items():
        pixels = opencv.decode(data)
        for op in ("decode", "encode"):
            base = measure(opencv, op, data, pixels, reps, threads)
            base["image"] = image
            rows.append(base)
            if op == "encode":
                strips = measure(OpenCvStrips(), op, data, pixels, reps, threads)
                strips["image"] = image
                if strips["ms_1_thread"] and base["ms_1_thread"]:
                    strips["ratio"] = strips["ms_1_thread"] / base["ms_1_thread"]
                rows.append(strips)
            else:  # the same pixels with a restart marker every MCU row, one piece against strips
                marked = with_restarts(pixels)
                one, cut = (measure(codec, op, marked, pixels, reps, threads) for codec in (opencv, OpenCvStrips()))
                for row in (one, cut):
                    row["image"] = f"{image}+RST"
                if cut["ms_1_thread"] and one["ms_1_thread"]:
                    cut["ratio"] = cut["ms_1_thread"] / one["ms_1_thread"]
                rows += [one, cut]
            if nv is None:
                rows.append({"codec": "nvimgcodec", "image": image, "op": op, "ms_1_thread": None,
                             "per_s_threads": None, "gpu_share": None, "batch_ms_per_image": None,
                             "mean_abs_diff": None, "bytes": None, "error": "unavailable (see above)"})
                continue
            for codec in (nv, QueuedGpuJpeg(nv), PerThreadGpuJpeg(nv)):
                row = measure(codec, op, data, pixels, reps, threads)
                row["image"] = image
                if row["ms_1_thread"] and base["ms_1_thread"]:
                    row["ratio"] = row["ms_1_thread"] / base["ms_1_thread"]
                rows.append(row)
    return rows


def render(rows: list[dict[str, Any]], threads: int) -> str:
    def cell(value: Any, fmt: str = "{:.2f}") -> str:
        return "-" if value is None else fmt.format(value)

    return table(
        ["image", "op", "codec", "ms/img 1 thread", f"img/s {threads} threads", "gpu share",
         f"batch {threads} ms/img", "/opencv", "mean |diff|", "bytes", "error"],
        [[r["image"], r["op"], r["codec"], cell(r["ms_1_thread"]), cell(r["per_s_threads"], "{:.0f}"),
          cell(r["gpu_share"]), cell(r["batch_ms_per_image"]), cell(r.get("ratio")), cell(r["mean_abs_diff"], "{:.3f}"),
          cell(r["bytes"], "{}"), r["error"][:160]] for r in rows])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30, help="timed runs per row (after one untimed)")
    parser.add_argument("--threads", type=int, default=8, help="threads for img/s, and the batch size")
    parser.add_argument("--sizes", default="1080p,4k,solvay", help="comma-separated: 1080p, 4k, solvay")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    images = build_images([s.strip() for s in args.sizes.split(",") if s.strip()])
    nv, why = open_nvimgcodec()
    rows = run(images, max(1, args.reps), max(1, args.threads), nv)
    text = render(rows, args.threads)
    print(f"JPEG quality {QUALITY}; OpenCV {cv2.__version__}, {cv2.getNumThreads()} OpenCV threads, "
          f"{HELPER_THREADS} helper threads for strips; "
          f"nvImageCodec: {describe(nv) if nv is not None else why}")
    print(text)
    result = {"rows": rows, "table": text, "reps": args.reps, "threads": args.threads,
              "nvimgcodec": describe(nv) if nv is not None else why}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({k: v for k, v in result.items() if k != "table"}, indent=2))
    return result


if __name__ == "__main__":
    main()
