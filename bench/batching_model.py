"""The micro-batcher (pipeline/batching.py) against a modelled GPU, on any machine.

    python -m bench.batching_model                      # the H100's measured run costs (README GPU)
    python -m bench.batching_model --detector 1.0+1.2 --swapper 1.9+0.8 --cpu-ms 16 --concurrency 1,8,32

Why: on an H100, merging concurrent requests' runs (BATCH_WAIT_MS=2) made a one-worker pod slower
(35-39 against 106-138 requests/s at concurrency 8 and 32), and the cause was not pinned down in the GPU
time there was. This bench takes the GPU out: each model is a fake session whose runs take turns on one
lock (one GPU, one stream: runs do not overlap) and cost `overhead + per_row * rows` ms, slept with the
GIL released, as a launch-bound model on a GPU costs. Each request sleeps `--cpu-ms` (decode, paste and
encode, which release the GIL and have CPUs enough on a GPU machine), runs the detector on one frame and
the swapper on one face through the real MicroBatcher or without it, taking turns at each concurrency.

If the wrapper gains here but not on the GPU, what costs is in the runtime's batched runs on the device
(new shapes, memory, copies), not in how the wrapper gathers and hands out rows. The model's ceiling
without merging is one request per (detector + swapper) ms: 205 requests/s with the H100's costs, about
what four workers served there (194).

Defaults: overhead + per-row ms from the H100's table (README "Measured on an NVIDIA H100": a run of one
and a row of a batch of 8, fp32): detector 2.22 and 1.33, swapper 2.66 and 1.03, solved for the two terms.
The detector's per-row figure came from the proxies' probe input, not a 640x640 frame, so it is rough.
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from bench.common import concurrent_rate, table


class ModelledSession:
    """A session whose runs take turns on `gpu` and sleep `overhead_ms + per_row_ms * rows`."""

    def __init__(self, gpu: threading.Lock, overhead_ms: float, per_row_ms: float) -> None:
        self.gpu, self.overhead_s, self.per_row_s = gpu, overhead_ms / 1000, per_row_ms / 1000
        self.runs = 0

    def run(self, output_names, feeds, run_options=None) -> list[np.ndarray]:
        rows = len(next(iter(feeds.values())))
        with self.gpu:
            time.sleep(self.overhead_s + self.per_row_s * rows)
            self.runs += 1
        return [np.zeros((rows, 1), np.float32)]

    def get_inputs(self) -> list:
        return []


def parse_cost(text: str) -> tuple[float, float]:
    """'1.02+1.20' -> (overhead ms, per-row ms)."""
    overhead, per_row = text.split("+")
    return float(overhead), float(per_row)


def serve(wait_ms: float, costs: dict[str, tuple[float, float]], cpu_ms: float, concurrency: int,
          count: int) -> tuple[float, float, str]:
    """(requests/s, p50 ms, runs/calls per model) of `count` modelled requests from `concurrency` threads."""
    from pipeline.batching import MicroBatcher

    gpu = threading.Lock()
    models = {name: ModelledSession(gpu, *cost) for name, cost in costs.items()}
    sessions = {name: MicroBatcher(m, wait_ms, 32) if wait_ms > 0 else m for name, m in models.items()}
    feeds = {"detector": {"image": np.zeros((1, 640, 640, 3), np.uint8)},
             "swapper": {"target": np.zeros((1, 3, 128, 128), np.float32)}}

    def one() -> None:
        time.sleep(cpu_ms / 2000)  # decode
        for name, session in sessions.items():
            session.run(None, feeds[name])
        time.sleep(cpu_ms / 2000)  # paste and encode

    rate, p50 = concurrent_rate(one, concurrency, count)
    runs = ", ".join(f"{name} {m.runs}/{count}" for name, m in models.items())
    return rate, p50, runs


def main(argv: list[str] | None = None) -> list[list]:
    parser = argparse.ArgumentParser(prog="python -m bench.batching_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--detector", default="1.02+1.20", help="overhead+per-row ms of a detector run")
    parser.add_argument("--swapper", default="1.86+0.80", help="overhead+per-row ms of a swapper run")
    parser.add_argument("--cpu-ms", type=float, default=16.0, help="a request's CPU stages, GIL released")
    parser.add_argument("--wait-ms", type=float, default=2.0, help="BATCH_WAIT_MS of the merged rows")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=400, help="requests per row")
    args = parser.parse_args(argv)
    costs = {"detector": parse_cost(args.detector), "swapper": parse_cost(args.swapper)}
    ceiling = 1000 / sum(o + r for o, r in costs.values())
    rows = []
    for c in (int(x) for x in args.concurrency.split(",")):
        for wait in (0.0, args.wait_ms):  # taking turns, so load from elsewhere hits both alike
            rate, p50, runs = serve(wait, costs, args.cpu_ms, c, max(args.requests, c))
            rows.append([f"BATCH_WAIT_MS={wait:g}", c, rate, p50, runs])
    print(f"modelled GPU: runs one at a time; ms per run = overhead + per row x rows: {costs}; "
          f"CPU {args.cpu_ms:g} ms a request; without merging at most {ceiling:.0f} requests/s", flush=True)
    print(table(["config", "concurrency", "requests/s", "p50 ms", "session runs/calls"], rows))
    return rows


if __name__ == "__main__":
    main()
