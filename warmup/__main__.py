"""`python -m warmup check`: verify the model set and run every model once; exit 0 when it would serve."""

from __future__ import annotations

import argparse
import json
import sys

from . import Warmup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m warmup")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="load and exercise the model set from MODEL_PATH/MODEL_VERSION")
    parser.parse_args(argv)
    warm = Warmup(exercise=True)
    warm.ensure_started()
    warm.readiness.ready_event.wait()
    print(json.dumps(warm.readiness.as_dict(), indent=2))
    return 0 if warm.readiness.ready else 1


if __name__ == "__main__":
    sys.exit(main())
