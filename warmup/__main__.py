"""`python -m warmup prefetch|prepare|check`.

prefetch SOURCE  copy a model set (fsspec URI of a folder with manifest.json, or `default`) into
                 MODEL_PATH/<version>/ (--model-path, default $MODEL_PATH, else ./models), verified;
                 exit 1 with the reason on any failure, leaving nothing partial behind
prepare          build derived artefacts (emap side file, optimised graphs) for $MODEL_PATH/$MODEL_VERSION
                 into $CACHE_PATH, so serving processes start without building anything
check            verify, load and exercise the model set; exit 0 when it would serve
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline import EnvReader, PipelineError, Settings, prepare
from pipeline.config import DEFAULT_MODEL_PATH

from . import Warmup
from .prefetch import PrefetchError, prefetch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m warmup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("prefetch", help="copy a verified model set onto the volume")
    pre.add_argument("source", help="fsspec URI of a folder with manifest.json, or 'default'")
    pre.add_argument("--version", help="folder name under MODEL_PATH (default: the manifest's version)")
    pre.add_argument("--model-path", default=EnvReader().str("MODEL_PATH", DEFAULT_MODEL_PATH),
                     help="model root to install into (default: $MODEL_PATH, else ./models)")
    pre.add_argument("--current", action="store_true", help="point MODEL_PATH/current at this version")
    sub.add_parser("prepare", help="build derived artefacts for MODEL_PATH/MODEL_VERSION")
    sub.add_parser("check", help="load and exercise the model set")
    args = parser.parse_args(argv)

    if args.command == "prefetch":
        try:
            result = prefetch(args.source, Path(args.model_path), args.version, args.current)
        except PrefetchError as exc:
            print(f"prefetch failed: {exc}", file=sys.stderr)
            return 1
        print(json.dumps({"version": result.version, "directory": str(result.directory), "copied": result.copied,
                          "resumed": result.resumed, "reused": result.reused}))
        return 0
    if args.command == "prepare":
        try:
            built = prepare(Settings.from_env())
        except PipelineError as exc:
            print(f"prepare failed: {exc.message}", file=sys.stderr)
            return 1
        print(json.dumps({"built": built}))
        return 0
    warm = Warmup(exercise=True, wait_for_models=False)
    warm.ensure_started()
    warm.readiness.ready_event.wait()
    print(json.dumps(warm.readiness.as_dict(), indent=2))
    return 0 if warm.readiness.ready else 1


if __name__ == "__main__":
    sys.exit(main())
