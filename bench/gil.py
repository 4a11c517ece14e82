"""Where a serving process holds the GIL, per request: py-spy's `--gil` samples, summed by function.

Why: one serving process can do at most 1 s of GIL-held work a second, so the GIL-held milliseconds
per request bound what one worker serves, whatever the GPU could do (one H100 worker: 136 requests/s at
concurrency 32 with the GPU busy 8-18% of the time). py-spy samples only the thread that holds the GIL
(`--gil`); a sample's innermost Python frame is the line that held it (a NumPy or OpenCV call that keeps
the GIL shows as the line calling it). `summarise` turns the raw samples into ms per request: in all,
by innermost line (`self`) and by function anywhere on the stack (`inclusive`, without the wrappers
every request runs through).

    python -m bench.gil --pid PID --seconds 20 --requests N     (or through bench.gpu --gil-seconds)

py-spy is not a dependency (`pip install py-spy`; bench/gpu_machine.sh takes its wheel from the GPU kit)
and needs to be allowed to read the process (root, or ptrace permission); when it cannot, `finish` says
why and the benches go on without it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.common import table

RATE = 200  # samples a second
# a function on at least this share of all samples wraps the request (threads, Flask, the handler): not
# listed among the functions; a hot spot that large still shows as a line in the `self` table
WRAPPER_SHARE = 0.5


def py_spy() -> str | None:
    """The py-spy executable: $PY_SPY, on PATH, or beside this interpreter."""
    for candidate in (os.environ.get("PY_SPY"), shutil.which("py-spy"), str(Path(sys.executable).parent / "py-spy")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def start(pid: int, rate: int = RATE) -> tuple[subprocess.Popen | None, Path | None, str]:
    """Start recording `pid` (the caller then puts the load on and calls `finish`): the recorder, its output
    file, and "" (or None, None and why not)."""
    exe = py_spy()
    if exe is None:
        return None, None, "py-spy is not installed (pip install py-spy)"
    out = Path(tempfile.mkdtemp(prefix="ff-gil-")) / "samples.txt"
    cmd = [exe, "record", "--gil", "--nonblocking", "--rate", str(rate), "--format", "raw", "--output", str(out),
           "--duration", "600", "--pid", str(pid)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), out, ""


def finish(started: tuple[subprocess.Popen | None, Path | None, str]) -> tuple[str | None, str]:
    """Stop the recorder once the load is done (SIGINT: py-spy writes what it has) and return its samples'
    text, so the samples cover the load and not a guessed duration; or (None, why not)."""
    proc, out, why = started
    if proc is None or out is None:
        return None, why
    try:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        if not out.is_file():
            return None, f"py-spy wrote no samples ({proc.returncode}): {(err or '').strip()[-300:]}"
        return out.read_text(), ""
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def _function(frame: str) -> str:
    """`name (file.py:line)` -> `name (file.py)`: a function, whichever of its lines."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.split(':')[0].rstrip(')')})" if where else name


def summarise(samples: str, requests: int, rate: int = RATE, top: int = 15) -> dict:
    """GIL-held ms per request in all, and the `top` lines (self) and functions (inclusive) by ms per request."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for line in samples.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for function in {_function(f) for f in frames}:
            anywhere[function] += n
    per_request = 1000.0 / rate / max(requests, 1)
    return {
        "ms_per_request": total * per_request,
        "self": [[frame, n * per_request] for frame, n in own.most_common(top)],
        # the request's wrappers (threads, Flask, the handler) are on every stack: only what tells apart
        "inclusive": [[function, n * per_request] for function, n in anywhere.most_common()
                      if n < WRAPPER_SHARE * total][:top],
    }


def print_summary(summary: dict, title: str) -> None:
    print(f"{title}: the GIL held {summary['ms_per_request']:.2f} ms per request")
    print(table(["innermost line (self)", "ms/request"], [[f[:110], ms] for f, ms in summary["self"]]))
    print(table(["function, anywhere on the stack", "ms/request"], [[f[:110], ms] for f, ms in summary["inclusive"]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pid", type=int, required=True, help="the serving process")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--requests", type=int, required=True, help="requests it serves while recorded")
    args = parser.parse_args()
    started = start(args.pid)
    time.sleep(args.seconds)
    samples, why = finish(started)
    if samples is None:
        raise SystemExit(why)
    print_summary(summarise(samples, args.requests), f"process {args.pid}, {args.seconds:g} s")


if __name__ == "__main__":
    main()
