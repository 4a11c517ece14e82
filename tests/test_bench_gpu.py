"""The GPU bench in reduced form on the CPU, so CI keeps it working (timings are printed, never asserted)."""

from __future__ import annotations

from .conftest import shared_file


def test_gpu_bench_runs_on_the_cpu():
    shared_file("models", "scrfd_2.5g_bnkps.onnx")
    shared_file("images", "solvay_conference_1927.png")
    from bench.gpu import main

    result = main(["--cpu", "--requests", "3", "--concurrency", "1,2", "--images", "1080p,solvay", "--model-runs", "2",
                   "--configs", "defaults,unbatched,defaults@2,merged+cpushare", "--client-procs", "2", "--gil-seconds", "1"])
    assert result["ready_s"] > 0 and result["first_s"] >= result["ready_s"]
    assert {(row[0], row[1]) for row in result["models"]} == {(config, role) for config in ("defaults", "unbatched", "merged+cpushare", "fp32")
                                                               for role in ("detector", "recognizer", "swapper")}
    assert all(row[2] == "CPUExecutionProvider" for row in result["models"])
    # the batched configs prepared graphs with a free batch axis (a per-row time), the baseline as published;
    # the detector's only where runs merge across requests (one frame per request otherwise)
    assert all((row[4] == row[4]) == (row[0] != "unbatched" and (row[1] != "detector" or row[0] == "merged+cpushare"))
               for row in result["models"]), result["models"]
    # the multi-worker config reuses the defaults' graphs: no second row per model for it
    assert [run["config"] for run in result["runs"]] == ["defaults", "unbatched", "defaults@2", "merged+cpushare"]
    assert [run["serving_processes"] for run in result["runs"]] == [1, 1, 2, 1]
    for run in result["runs"]:  # the baseline ran in the same invocation, over the same rows
        assert [(row[0], row[1]) for row in run["rows"]] == [("1080p", 1), ("1080p", 2), ("solvay", 1), ("solvay", 2)]
        assert all(row[5] == 0 for row in run["rows"]), run["rows"]  # no request failed
        # every row's stages say how much of the latency no stage holds
        assert all(any(cell.startswith("outside ") for cell in row[3:]) for row in run["stages"]), run["stages"]
        # the serving processes and the clients did work for each request, and the machine was busy but not past full
        assert all(row[7] > 0 and row[8] > 0 and 0 < row[9] <= 100 for row in run["rows"]), run["rows"]
        # one worker: a GIL profile where py-spy can read the process (None where it cannot)
        assert ("gil" in run) == (run["serving_processes"] == 1)
        assert run.get("gil") is None or run["gil"]["ms_per_request"] > 0


def test_cuda_graph_bench_runs_on_the_cpu():
    """bench.cuda_graph with the stand-ins: on the CPU the wrapper captures through the binding, so every
    model has a replay row (timings printed, never asserted)."""
    shared_file("models", "scrfd_2.5g_bnkps.onnx")
    from bench.cuda_graph import main

    result = main(["--reps", "2", "--rounds", "1"])
    assert {row[0]: row[2] for row in result["rows"]} == {role: "on (1 shape)" for role in ("detector", "recognizer", "swapper")}
    assert all(row[3] > 0 and row[4] > 0 for row in result["rows"])
