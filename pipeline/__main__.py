"""Command line: `python -m pipeline fuse|detect|make-test-models`.

Exit codes: 0 success, 2 bad usage, 3 image or face problem, 4 model set problem.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import Settings
from .errors import ImageError, ModelSetInvalid, PipelineError
from .fuser import FuseOptions
from .loader import load_fuser
from .selection import MODES, Selection


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SystemExit(f"error: cannot read {path}: {exc.strerror}") from exc


def _fuse(args: argparse.Namespace) -> int:
    fuser = load_fuser(Settings.from_env())
    selection = Selection(mode=args.faces, index=args.index, min_face_size=args.min_face_size,
                          **({"reference_threshold": args.threshold} if args.threshold is not None else {}))
    reference = _read(args.reference) if args.reference else None
    fmt = args.format or (Path(args.output).suffix.lstrip(".") or "jpeg")
    options = FuseOptions(selection=selection, enhance=args.enhance, reference=reference, output_format=fmt,
                          quality=args.quality)
    result = fuser.fuse_bytes(_read(args.source), _read(args.target), options)
    Path(args.output).write_bytes(result.data)
    print(json.dumps(result.report.as_dict(), indent=2))
    return 0


def _detect(args: argparse.Namespace) -> int:
    fuser = load_fuser(Settings.from_env())
    image = fuser.decode(_read(args.image))
    faces = fuser.detect(image)
    print(json.dumps({"width": image.width, "height": image.height, "faces": [
        {"index": i, **f.as_dict()} for i, f in enumerate(faces)]}, indent=2))
    return 0


def _make_test_models(args: argparse.Namespace) -> int:
    from .testmodels import STANDIN_NOTICE, write_test_models

    target = write_test_models(Path(args.directory), detector=Path(args.detector) if args.detector else None,
                               version=args.version)
    print(f"wrote a model set to {target} (and {Path(args.directory) / 'current'} -> {args.version})")
    print(f"*** {STANDIN_NOTICE}. ***")
    if not args.detector:
        print("*** The detector is a stand-in too: it reports one fixed face. Pass --detector FILE "
              "(e.g. ../shared/models/scrfd_2.5g_bnkps.onnx) for real detection. ***")
    print(f"use it with: MODEL_PATH={args.directory}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="facefusion-fn fusion pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    fuse = sub.add_parser("fuse", help="swap the source's face into the target")
    fuse.add_argument("source")
    fuse.add_argument("target")
    fuse.add_argument("-o", "--output", required=True)
    fuse.add_argument("--faces", choices=MODES, default="largest")
    fuse.add_argument("--index", type=int)
    fuse.add_argument("--reference", help="image whose face selects the target faces (with --faces reference)")
    fuse.add_argument("--threshold", type=float, help="cosine similarity for --faces reference")
    fuse.add_argument("--min-face-size", type=int, default=0)
    fuse.add_argument("--enhance", action="store_true")
    fuse.add_argument("--format", choices=["jpeg", "jpg", "png", "webp"])
    fuse.add_argument("--quality", type=int, default=92)
    fuse.set_defaults(run=_fuse)
    detect = sub.add_parser("detect", help="print the faces found in an image as JSON")
    detect.add_argument("image")
    detect.set_defaults(run=_detect)
    make = sub.add_parser("make-test-models", help="write a stand-in model set (not real swaps)")
    make.add_argument("directory")
    make.add_argument("--detector", help="a real SCRFD .onnx file to use as the detector")
    make.add_argument("--version", default="test")
    make.set_defaults(run=_make_test_models)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ModelSetInvalid as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 4
    except (ImageError, PipelineError) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
