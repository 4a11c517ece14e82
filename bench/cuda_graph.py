"""CUDA graphs per model: a captured replay against an ordinary run of the same prepared graph.

    python -m bench.cuda_graph [--providers cuda] [--proxies] [--reps 40] [--rounds 3] [--json out.json]

Why: the detector's kernels took about 2.2 ms on an H100 and its request stage 8.1 ms; a CUDA graph
replays a run with one launch (pipeline/cuda_graph.py, `CUDA_GRAPHS`). This measures, per model and
without the server around it, what a replay costs against an ordinary run (`ordinary`), and what
the wrapper costs a shape that is not captured (a run of 2 rows, `2 rows: through the wrapper`, which
sends it to its second, ordinary session, against `2 rows: direct`), and what the wait for the device after copying the feeds
in would cost (`replay, device wait`: `GraphedSession.sync_inputs` on, off by default since the H200 run). The sessions are the loader's, from the same prepared
graphs: one bundle as served by default, one with `CUDA_GRAPHS=all` (on the CPU, where the runtime cannot
capture, the default bundle's sessions wrapped with `device="cpu"`: the same binding and hand-over). The
calls take turns within each round, so load on a shared machine falls on all of them; medians in ms.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.common import table, taking_turns


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--providers", default="cpu", help="EXECUTION_PROVIDERS: cpu or cuda")
    parser.add_argument("--proxies", action="store_true", help="the compute-realistic proxies (else the small stand-ins)")
    parser.add_argument("--reps", type=int, default=40, help="calls of each kind per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, help="a folder for the model set and prepared graphs, kept and reused")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args(argv)

    from bench.gpu import build_models
    from pipeline import Settings, load_models
    from pipeline.batch_axis import has_free_batch, probe_feeds
    from pipeline.cuda_graph import GraphedSession

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-cuda-graph-"))
    models = work / "models"
    if not (models / "current").exists():
        build_models(models, standins=not args.proxies)
    env = {"MODEL_PATH": str(models), "CACHE_PATH": str(work / "cache"), "EXECUTION_PROVIDERS": args.providers}
    plain = load_models(Settings.from_env(env))
    on_cpu = plain.providers[0] == "CPUExecutionProvider"
    graphed_bundle = plain if on_cpu else load_models(Settings.from_env({**env, "CUDA_GRAPHS": "all"}))
    rows = []
    for role, model in plain.models.items():
        ordinary = model.session  # no micro-batcher: BATCH_WAIT_MS is not in `env`
        graphed = (GraphedSession(ordinary, device="cpu", ordinary=lambda o=ordinary: o) if on_cpu
                   else graphed_bundle.graphed.get(role))
        if graphed is None:
            rows.append([role, plain.active[role][0], graphed_bundle.cuda_graphs.get(role, "?"), *[float("nan")] * 6])
            continue
        one = probe_feeds(ordinary.get_inputs(), 1)
        two = probe_feeds(ordinary.get_inputs(), 2) if has_free_batch(ordinary) else None
        ordinary.run(None, one)
        graphed.run(None, one)  # the shape the capture takes, as the warm-up's exercise does
        state = graphed.capture()
        graphed.make_others()  # the second session, for the shapes not captured (the loader makes it in the background)
        calls: dict[str, Callable[[], object]] = {
            "ordinary": lambda o=ordinary, f=one: o.run(None, f),
            "replay": lambda g=graphed, f=one: g.run(None, f),
        }

        def replay_with_wait(g=graphed, f=one):
            g.sync_inputs = True
            try:
                return g.run(None, f)
            finally:
                g.sync_inputs = False

        calls["replay, device wait"] = replay_with_wait
        if two is not None:
            calls["2 rows: direct"] = lambda o=ordinary, t=two: o.run(None, t)
            calls["2 rows: through the wrapper"] = lambda g=graphed, t=two: g.run(None, t)
        med = taking_turns(calls, args.rounds * args.reps)  # after a first call each: a new shape plans and allocates
        nan = float("nan")
        rows.append([role, plain.active[role][0], state, med["ordinary"], med["replay"], med["replay"] / med["ordinary"],
                     med["replay, device wait"], med.get("2 rows: direct", nan), med.get("2 rows: through the wrapper", nan)])
        if args.json:  # row by row: a time limit keeps what was measured
            args.json.write_text(json.dumps({"partial": True, "rows": rows}, indent=1))
    headers = ["model", "provider", "CUDA graph", "ordinary ms", "replay ms", "replay / ordinary",
               "replay, device wait ms", "2 rows: direct ms", "2 rows: through the wrapper ms"]
    print(f"{'proxies' if args.proxies else 'stand-ins'}, {args.rounds} rounds of {args.reps} calls each, taking turns"
          + (" (CPU: the wrapper replays through the binding; the runtime cannot capture here)" if on_cpu else ""))
    print(table(headers, rows))
    if args.json:
        args.json.write_text(json.dumps({"headers": headers, "rows": rows}, indent=1))
    return {"headers": headers, "rows": rows}


if __name__ == "__main__":
    main()
