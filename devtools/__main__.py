"""`python -m devtools serve|make-test-models`: run the function locally, write stand-in models.

serve [--port 8080] [--host H]
        Serve the function on this machine. When $MODEL_PATH/$MODEL_VERSION (default: the
        checkout's models/ folder, version `current`) holds no model set, write a stand-in set
        there first and say loudly that its swaps are not real. Then run the server as production
        does, `python -m function.serve --port N`, from the checkout
        (this process becomes the server, so Ctrl-C or SIGTERM stops it). From another folder:
        `path/to/checkout/.venv/bin/python path/to/checkout/devtools serve`.

make-test-models DIR [--detector FILE | --standin-detector] [--version V]
        Write a stand-in model set to DIR/V (default V: standin) and point DIR/current at it.
        Without --detector, the real SCRFD from ../shared/models/ is used when it is there;
        otherwise (or with --standin-detector) a stand-in detector that reports one fixed face.

Exit codes: 0 ok; 1 the set could not be written (DIR/V already exists, a file system error);
2 bad usage (unknown option, --detector naming a missing file, a folder or a file that is not an
SCRFD ONNX model, a version that is not a plain folder name). A failed run leaves no folder behind.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python path/to/checkout/devtools ...` from another folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devtools import REPO, SHARED_DETECTOR  # noqa: E402
from pipeline import EnvReader, ModelSetInvalid, plain_name, read_manifest  # noqa: E402
from pipeline.config import DEFAULT_MODEL_PATH  # noqa: E402
from pipeline.models import STANDIN_SUFFIX  # noqa: E402

EXIT_WRITE = 1
EXIT_USAGE = 2


class Failure(Exception):
    """A one-line error and the exit code it means."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _say(text: str = "") -> None:
    print(text, flush=True)


def banner(model_dir: Path, model_path: Path, fake_detector: bool) -> str:
    """The warning printed whenever stand-in models are written or served."""
    lines = [
        "STAND-IN MODELS: the swaps they produce are NOT real face swaps.",
        f"The set in {model_dir} only exercises the service end to end:",
        "its swapper inverts the face and tints it.",
    ]
    if fake_detector:
        lines.append("Its DETECTOR IS FAKE too: it reports one fixed face in every image.")
    lines += [
        "",
        "Real models (buffalo_l + inswapper_128, SHA-256 pinned), with internet access:",
        f"  .venv/bin/python -m warmup prefetch default --model-path {model_path} --current",
        "or from a bucket or folder you can reach (a folder holding manifest.json):",
        f"  .venv/bin/python -m warmup prefetch s3://your-bucket/models/<version> --model-path {model_path} --current",
    ]
    width = max(len(line) for line in lines) + 4
    rule = "*" * width
    return "\n".join([rule, *(f"* {line.ljust(width - 4)} *" for line in lines), rule])


def _check_detector(path: Path) -> None:
    """Refuse a --detector that cannot become the set's detector, before anything is written."""
    import onnx

    if not path.exists():
        raise Failure(f"--detector {path}: no such file", EXIT_USAGE)
    if not path.is_file():
        raise Failure(f"--detector {path}: is a folder, not an .onnx file", EXIT_USAGE)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise Failure(f"--detector {path}: not an ONNX model ({type(exc).__name__})", EXIT_USAGE) from exc
    outputs = len(model.graph.output)
    if outputs != 9:
        raise Failure(f"--detector {path}: not an SCRFD detector with keypoints (it has {outputs} outputs, "
                      "SCRFD has 9)", EXIT_USAGE)


def _pick_detector(given: str | None, standin: bool = False) -> Path | None:
    """The detector file to use (checked), or None for the stand-in detector; says which."""
    if standin:
        _say("detector: STAND-IN (--standin-detector): detection is FAKE, every image gets one fixed face")
        return None
    if given:
        path = Path(given)
        _check_detector(path)
        _say(f"detector: {path} (real SCRFD)")
        return path
    if SHARED_DETECTOR.is_file():
        _check_detector(SHARED_DETECTOR)
        _say(f"detector: {SHARED_DETECTOR} (real SCRFD, found in ../shared beside the checkout)")
        return SHARED_DETECTOR
    _say(f"detector: STAND-IN ({SHARED_DETECTOR} is not there and no --detector was given): "
         "detection is FAKE, every image gets one fixed face")
    return None


def make_models(directory: Path, version: str, detector: Path | None, link_current: bool = True) -> Path:
    """Write the set into `directory/version` whole or not at all: on failure every folder this call
    created is removed again, so nothing partial or empty is left."""
    from devtools.standins import write_test_models

    if not plain_name(version):
        raise Failure(f"--version {version!r}: must be a plain folder name (no '/', not hidden, not 'current')",
                      EXIT_USAGE)
    target = directory / version
    if target.exists() or target.is_symlink():
        raise Failure(f"{target} already exists; remove it or pass another --version", EXIT_WRITE)
    created = []
    probe = directory
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    try:
        return write_test_models(directory, detector=detector, version=version, link_current=link_current,
                                 maskers=True, swappers=True, extra_enhancers=True)
    except OSError as exc:
        raise Failure(f"cannot write the model set to {target}: {exc.strerror or exc}", EXIT_WRITE) from exc
    finally:
        if not (target / "manifest.json").is_file():
            for folder in created:  # deepest first
                try:
                    folder.rmdir()
                except OSError:
                    break


def _make_test_models(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    if not plain_name(args.version):
        raise Failure(f"--version {args.version!r}: must be a plain folder name (no '/', not hidden, "
                      "not 'current')", EXIT_USAGE)
    if args.detector and args.standin_detector:
        raise Failure("--detector and --standin-detector exclude each other", EXIT_USAGE)
    detector = _pick_detector(args.detector, args.standin_detector)
    target = make_models(directory, args.version, detector)
    current = directory / "current"
    _say(f"wrote a model set to {target}")
    if current.is_symlink():
        _say(f"{current} -> {os.readlink(current)}")
    else:
        _say(f"{current} is not a symlink, so it was left alone; use MODEL_VERSION={args.version}")
    _say(banner(target, directory, detector is None))
    _say(f"use it with: MODEL_PATH={directory}")
    return 0


def _model_location(env: EnvReader) -> tuple[Path, str]:
    """MODEL_PATH (absolute; the checkout's models/ when unset) and MODEL_VERSION."""
    raw = env.str("MODEL_PATH")
    model_path = Path(raw).absolute() if raw else REPO / Path(DEFAULT_MODEL_PATH)
    if not raw:
        _say(f"MODEL_PATH is not set: using {model_path} (the checkout's models/ folder)")
    return model_path, env.str("MODEL_VERSION", "current") or "current"


def _standin_kinds(model_dir: Path) -> set[str]:
    """The stand-in kinds a set's manifest names (empty for a real set or an unreadable manifest)."""
    try:
        models = read_manifest(model_dir).models.values()
    except ModelSetInvalid:
        return set()
    return {entry.kind for entry in models if entry.kind.endswith(STANDIN_SUFFIX)}


def ensure_model_set(model_path: Path, version: str) -> None:
    """Leave a set that is there alone; write a stand-in set where there is none, with the banner."""
    model_dir = model_path / version
    if (model_dir / "manifest.json").is_file():
        _say(f"serving the model set in {model_dir.resolve()}")
        standins = _standin_kinds(model_dir)
        if standins:
            _say(banner(model_dir.resolve(), model_path, "scrfd-standin" in standins))
        return
    if model_dir.is_dir() and any(model_dir.iterdir()):
        raise Failure(f"{model_dir} holds files but no manifest.json (an unfinished prefetch?); "
                      "finish or remove it, or point MODEL_PATH elsewhere", EXIT_WRITE)
    _say(f"no model set in {model_dir}: writing a stand-in set there")
    detector = _pick_detector(None)
    if model_dir.is_dir() and not model_dir.is_symlink():
        model_dir.rmdir()  # an empty folder: the set takes its place
    if version == "current":  # write `standin` and point `current` at it (a dangling link is replaced)
        target = make_models(model_path, "standin", detector)
        _say(f"{model_path / 'current'} -> standin")
    else:
        target = make_models(model_path, version, detector, link_current=False)
    _say(banner(target, model_path, detector is None))


def _serve(args: argparse.Namespace) -> int:
    env = EnvReader()
    model_path, version = _model_location(env)
    ensure_model_set(model_path, version)
    if importlib.util.find_spec("functions_framework") is None or importlib.util.find_spec("uvicorn") is None:
        raise Failure("the project is not installed in this Python; install it first: "
                      ".venv/bin/pip install -e '.[cpu]'", EXIT_USAGE)
    exe = sys.executable
    argv = [exe, "-m", "function.serve", "--port", str(args.port)]
    if args.host:
        argv += ["--host", args.host]
    os.environ["MODEL_PATH"] = str(model_path)
    os.environ["MODEL_VERSION"] = version
    os.chdir(REPO)
    _say(f"serving on http://{args.host or 'localhost'}:{args.port} (readiness: /readyz): {' '.join(argv)}")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(exe, argv)
    return 0  # not reached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the function here, with stand-in models if there are none")
    serve.add_argument("--port", type=int, default=EnvReader().int("PORT", 8080, minimum=0), help="default: $PORT, else 8080")
    serve.add_argument("--host", help="address to listen on (default: all, 0.0.0.0)")
    serve.set_defaults(run=_serve)
    make = sub.add_parser("make-test-models", help="write a stand-in model set (NOT real swaps)")
    make.add_argument("directory", help="model root (MODEL_PATH); the set goes to DIR/VERSION")
    make.add_argument("--detector", help="a real SCRFD .onnx file (default: ../shared/models/scrfd_2.5g_bnkps.onnx "
                                         "when present, else a stand-in detector)")
    make.add_argument("--standin-detector", action="store_true",
                      help="use the stand-in detector (one fixed face) even where a real one is at hand")
    make.add_argument("--version", default="standin", help="the set's folder name (default: standin)")
    make.set_defaults(run=_make_test_models)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except Failure as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
