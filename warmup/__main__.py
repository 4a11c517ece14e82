"""`python -m warmup prefetch|prepare|check`.

prefetch SOURCE  copy a model set (fsspec URI of a folder with manifest.json, or `default`) into
                 MODEL_PATH/<version>/ (--model-path, default $MODEL_PATH, else ./models), verified;
                 exit 1 with the reason on any failure, leaving nothing partial behind
prefetch NAME..  the public files of these catalogue names (warmup/catalogue.py: hyperswap_1a_256,
                 gfpgan_1.4, xseg_1, ...) as one set, each verified by its pinned SHA-256 or the one
                 given with --sha256 NAME=HEX (refused without either); prints each model's licence
prepare          build derived artefacts (emap side file, optimised graphs) for $MODEL_PATH/$MODEL_VERSION
                 into $CACHE_PATH, so serving processes start without building anything
check            verify, load and exercise the model set; exit 0 when it would serve
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline import ConfigError, EnvReader, PipelineError, Settings, prepare
from pipeline.config import DEFAULT_MODEL_PATH

from . import Warmup
from .catalogue import CATALOGUE, CatalogueError, is_catalogue_request, parse_hashes, plan
from .prefetch import PrefetchError, prefetch


def _prefetch_source(args: argparse.Namespace) -> str | dict:
    """One URI or `default`, or catalogue names made into a manifest (their licences printed)."""
    if is_catalogue_request(args.source):
        planned = plan(args.source, parse_hashes(args.sha256), args.mirror, args.version)
        for line in planned.lines:
            print(line, file=sys.stderr)
        return planned.manifest
    name = args.source[0]
    if len(args.source) == 1 and name != "default" and "://" not in name and "/" not in name \
            and not Path(name).exists():  # a bare word: a mistyped catalogue name, not a folder
        raise CatalogueError(f"{name} is neither a catalogue name nor a folder or URI holding a manifest.json; "
                             f"the catalogue has {', '.join(CATALOGUE)}")
    if len(args.source) > 1 or args.sha256 or args.mirror:
        raise CatalogueError(f"{' '.join(args.source)}: several sources, --sha256 and --mirror are for catalogue "
                             f"names only; unknown names: {', '.join(n for n in args.source if n not in CATALOGUE)}")
    return args.source[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m warmup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("prefetch", help="copy a verified model set onto the volume")
    pre.add_argument("source", nargs="+", help="fsspec URI of a folder with manifest.json, 'default', or "
                                               "catalogue names (warmup/catalogue.py)")
    pre.add_argument("--sha256", action="append", default=[], metavar="NAME=HEX",
                     help="with catalogue names: the SHA-256 a file must have (needed where none is pinned)")
    pre.add_argument("--mirror", help="with catalogue names: a folder URI holding the files by their names, "
                                      "read instead of the public locations")
    pre.add_argument("--version", help="folder name under MODEL_PATH (default: the manifest's version)")
    pre.add_argument("--model-path", default=EnvReader().str("MODEL_PATH", DEFAULT_MODEL_PATH),
                     help="model root to install into (default: $MODEL_PATH, else ./models)")
    pre.add_argument("--current", action="store_true", help="point MODEL_PATH/current at this version")
    sub.add_parser("prepare", help="build derived artefacts for MODEL_PATH/MODEL_VERSION")
    sub.add_parser("check", help="load and exercise the model set")
    args = parser.parse_args(argv)

    if args.command == "prefetch":
        try:
            source: str | dict = _prefetch_source(args)
            result = prefetch(source, Path(args.model_path), args.version, args.current)
        except (PrefetchError, CatalogueError) as exc:
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
        except ConfigError as exc:  # a bad setting, EXECUTION_PROVIDERS naming what this runtime lacks included
            print(f"prepare failed: {exc}", file=sys.stderr)
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
