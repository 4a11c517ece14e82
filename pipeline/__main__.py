"""Command line: `python -m pipeline fuse|detect`.

    fuse SOURCE [SOURCE ...] TARGET -o OUT [options]
                                          swap SOURCE's largest face (several: their average) into TARGET,
                                          write OUT, print the report
                                          (a TARGET ending in .mp4, .mov, .mkv or .webm is a video: every
                                          frame is fused, the audio copied; --crf, --preset, --codec)
    detect IMAGE                          print the faces found in IMAGE as JSON

Models come from $MODEL_PATH/$MODEL_VERSION (default ./models/current, relative to the current
folder). A stand-in set for trying things out: `python -m devtools make-test-models ./models`.

Exit codes (every failure prints one `error: ...` line on stderr, no traceback):
  0  success
  1  the inference runtime failed (out of memory, say): worth a retry
  2  bad usage: unknown or missing arguments, invalid option values (--quality 0, an --index no face
     has, --faces reference without --reference, an unknown output format, --mask-regions without
     region in --mask, --mask occlusion or region with no such model in the set, a --pixel-boost the
     swapper's size does not divide, a --swapper role the set lacks, more than 8 sources, an --enhancer
     role the set lacks, --enhancer-* without --enhance, --detector-angles other than 0/90/180/270), an
     invalid environment variable
  3  an image, video or face problem: not an image or video, undecodable, too large or long, a variable
     frame rate, an unsupported codec, no face in the source (in any of the sources) or target
  4  a model set problem: no set where MODEL_PATH/MODEL_VERSION point, or a missing or corrupt file
  5  file I/O: an input that cannot be read, an output that cannot be written (checked before the
     fusion runs; the output is written atomically, so OUT is either untouched or complete)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from .angles import DEFAULT_DETECTOR_ANGLES, check_angles
from .boost import PIXEL_BOOSTS
from .config import DEFAULT_MODEL_PATH, ConfigError, EnvReader, Settings
from .errors import (
    ImageError,
    InvalidOptions,
    ModelSetInvalid,
    PipelineError,
    RuntimeFailure,
    UnsupportedVideoOutput,
)
from .files import atomic_write, fsync_dir, temp_name
from .fuser import Fuser
from .fusion_types import FuseOptions
from .images import checked_format
from .loader import load_fuser
from .masks import REGIONS, mask_options
from .models.enhancer import EnhancerOptions
from .selection import MODE_OPTIONS, MODES, Selection, misplaced
from .sources import MAX_SOURCES, check_count

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_IMAGE = 3
EXIT_MODELS = 4
EXIT_IO = 5


class CliError(Exception):
    """A failure with its one-line message and exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except IsADirectoryError as exc:
        raise CliError(f"cannot read the {what} {path}: it is a folder", EXIT_IO) from exc
    except OSError as exc:
        raise CliError(f"cannot read the {what} {path}: {exc.strerror or exc}", EXIT_IO) from exc


def _check_writable(path: str) -> None:
    """Fail before any model runs if OUT cannot be written: its folder must exist and take a new file."""
    out = Path(path)  # a folder at `path` was refused by the caller already
    folder = out.parent
    if not folder.is_dir():
        why = "does not exist" if not folder.exists() else "is not a folder"
        raise CliError(f"cannot write the output {path}: {folder} {why}", EXIT_IO)
    try:  # the real test (access() says yes to root on a read-only mount): create and drop a file there
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{out.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise CliError(f"cannot write the output {path}: {folder}: {exc.strerror or exc}", EXIT_IO) from exc


def _load(settings: Settings) -> Fuser:
    try:
        return load_fuser(settings)
    except ModelSetInvalid as exc:
        raw = EnvReader().str("MODEL_PATH")
        where = (f"MODEL_PATH is {raw}" if raw else
                 f"MODEL_PATH is not set, and then it is {DEFAULT_MODEL_PATH} relative to the current folder, "
                 f"here {Path.cwd()}")
        raise CliError(f"{exc.message}. Looked in {settings.model_dir.absolute()}: {where}; MODEL_VERSION is "
                       f"{settings.model_version}. Set MODEL_PATH to the folder holding your model sets, or write "
                       "a stand-in set there: python -m devtools make-test-models ./models", EXIT_MODELS) from exc


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc


def _is_video(path: str) -> bool:
    # imported here, like every video import: PyAV costs ~80 ms at start-up that image runs need not pay
    from .video import CONTAINERS

    return Path(path).suffix.lower() in CONTAINERS


def _fuse(args: argparse.Namespace) -> int:
    if Path(args.output).is_dir():  # before its name is read as a format
        raise CliError(f"cannot write the output {args.output}: it is a folder", EXIT_IO)
    if _is_video(args.target) or _is_video(args.output):
        return _fuse_video(args)
    try:
        # an extension we do not write (out.txt) without --format is refused by the encoder, by its name
        fmt = checked_format(args.format, args.output, "--format") or Path(args.output).suffix.lstrip(".").lower() or "jpeg"
        options = _fuse_options(args, output_format=fmt, quality=args.quality)
    except InvalidOptions as exc:
        raise CliError(exc.message, EXIT_USAGE) from exc
    if args.faces == "reference" and not args.reference:
        raise CliError("--faces reference needs --reference IMAGE", EXIT_USAGE)
    settings = _settings()
    source, target = [_read(path, "source") for path in args.source], _read(args.target, "target")
    options.reference = _read(args.reference, "reference") if args.reference else None
    _check_writable(args.output)
    result = _load(settings).fuse_bytes(source, target, options)
    try:
        atomic_write(args.output, result.data)
    except OSError as exc:
        raise CliError(f"cannot write the output {args.output}: {exc.strerror or exc}", EXIT_IO) from exc
    print(json.dumps(result.report.as_dict(), indent=2))
    return EXIT_OK


def _fuse_options(args: argparse.Namespace, **encoding: Any) -> FuseOptions:
    """The fusion options of `fuse`'s flags, for an image or a video target alike (InvalidOptions)."""
    selection = Selection(mode=args.faces, index=args.index, min_face_size=args.min_face_size,
                          **({"reference_threshold": args.threshold} if args.threshold is not None else {}))
    flags = {"index": ("--index", args.index), "reference_threshold": ("--threshold", args.threshold),
             "reference": ("--reference", args.reference)}
    wrong = misplaced(args.faces, [name for name, (_, value) in flags.items() if value is not None])
    if wrong is not None:  # as the function answers
        raise InvalidOptions(f"{flags[wrong][0]} applies when --faces is {MODE_OPTIONS[wrong]}, not {args.faces}")
    masks = mask_options(_words(args.mask), args.mask_blur, _padding(args.mask_padding), _words(args.mask_regions))
    check_count(len(args.source))
    return FuseOptions(selection=selection, enhance=args.enhance, pixel_boost=args.pixel_boost, masks=masks,
                       swapper=args.swapper, swapper_weight=args.swapper_weight,
                       enhancement=EnhancerOptions(args.enhancer, args.enhancer_blend, args.enhancer_weight),
                       detector_angles=_angles(args.detector_angles), **encoding)


def _fuse_video(args: argparse.Namespace) -> int:
    """A video target: every frame fused through `pipeline.video`, written atomically under OUT's name."""
    from .config import VideoLimits
    from .video import VideoOptions, fuse_video, probe

    try:
        fuse = _fuse_options(args)
        options = VideoOptions(fuse=fuse, crf=args.crf, preset=args.preset, codec=args.codec)
        if not _is_video(args.output):
            raise UnsupportedVideoOutput(f"the output of a video must end in .mp4, .mov, .mkv or .webm, got {args.output}")
    except (InvalidOptions, UnsupportedVideoOutput) as exc:
        raise CliError(exc.message, EXIT_USAGE) from exc
    if args.faces == "reference" and not args.reference:
        raise CliError("--faces reference needs --reference IMAGE", EXIT_USAGE)
    settings = _settings()
    try:
        limits = VideoLimits.from_env()
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    source = [_read(path, "source") for path in args.source]
    fuse.reference = _read(args.reference, "reference") if args.reference else None
    if not Path(args.target).is_file():
        _read(args.target, "target")  # the same message as for an image: missing, a folder, unreadable
    _check_writable(args.output)
    try:
        info = probe(args.target, limits)
    except OSError as exc:
        raise CliError(f"cannot read the target {args.target}: {exc.strerror or exc}", EXIT_IO) from exc
    out = Path(args.output)
    fuser = _load(settings)
    partial = out.parent / (temp_name(out) + out.suffix)  # the suffix picks the container
    try:
        report = fuse_video(fuser, source, args.target, partial, options, info=info)
        partial.replace(out)
    except UnsupportedVideoOutput as exc:
        raise CliError(exc.message, EXIT_USAGE) from exc
    except OSError as exc:
        raise CliError(f"cannot write the output {args.output}: {exc.strerror or exc}", EXIT_IO) from exc
    finally:
        partial.unlink(missing_ok=True)
    fsync_dir(out.parent)
    print(json.dumps({"video": info.as_dict(), **report.as_dict()}, indent=2))
    return EXIT_OK


def _words(text: str | None) -> tuple[str, ...] | None:
    """A comma-separated list flag (`box,occlusion`), as in a multipart form; None when not given."""
    return None if text is None else tuple(word.strip() for word in text.split(","))


def _angles(text: str | None) -> tuple[int, ...]:
    """--detector-angles 0,90,...: whole numbers, checked by FuseOptions (a word is refused as they are)."""
    if text is None:
        return DEFAULT_DETECTOR_ANGLES
    try:
        return tuple(int(word) for word in text.split(","))
    except ValueError as exc:
        raise InvalidOptions(f"detector_angles must be one or more of 0, 90, 180, 270, got {text!r}") from exc


def _padding(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(word) for word in text.split(","))
    except ValueError as exc:
        raise InvalidOptions(f"mask_padding must be four whole percentages 0-100 (top, right, bottom, left), "
                             f"got {text!r}") from exc


def _detect(args: argparse.Namespace) -> int:
    settings = _settings()
    data = _read(args.image, "image")
    try:
        angles = check_angles(_angles(args.detector_angles))
    except InvalidOptions as exc:
        raise CliError(exc.message, EXIT_USAGE) from exc
    fuser = _load(settings)
    image = fuser.decode(data)
    faces = fuser.detect(image, angles)
    print(json.dumps({"width": image.width, "height": image.height, "faces": [
        {"index": i, **f.as_dict()} for i, f in enumerate(faces)]}, indent=2))
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True)
    fuse = sub.add_parser("fuse", help="swap the source's face into the target")
    fuse.add_argument("source", nargs="+", help=f"1 to {MAX_SOURCES} images; with several, their largest faces' "
                                                "embeddings are averaged (a source without a face is skipped)")
    fuse.add_argument("target")
    fuse.add_argument("-o", "--output", required=True, help="where to write the image (its suffix picks the format)")
    fuse.add_argument("--faces", choices=MODES, default="largest")
    fuse.add_argument("--index", type=int, help="with --faces index: which face, counted left to right from 0")
    fuse.add_argument("--reference", help="image whose face selects the target faces (with --faces reference)")
    fuse.add_argument("--threshold", type=float, help="cosine similarity for --faces reference")
    fuse.add_argument("--min-face-size", type=int, default=0)
    fuse.add_argument("--enhance", action="store_true")
    fuse.add_argument("--format", choices=["jpeg", "jpg", "png", "webp"])
    fuse.add_argument("--quality", type=int, default=92, help="1-100")
    fuse.add_argument("--pixel-boost", type=int, choices=PIXEL_BOOSTS,
                      help="swap at this size in interleaved tiles (default: the swapper's own size)")
    fuse.add_argument("--mask", help="comma-separated masks, combined as their minimum: box, occlusion, region "
                                     "(default box)")
    fuse.add_argument("--mask-blur", type=float, help="the box's feather, 0-1 (default 0.3, insightface's)")
    fuse.add_argument("--mask-padding", help="percent cut off the box: TOP,RIGHT,BOTTOM,LEFT (default 0,0,0,0)")
    fuse.add_argument("--mask-regions", help=f"with --mask region: comma-separated regions of {', '.join(REGIONS)} "
                                             "(default all)")
    fuse.add_argument("--swapper", default="swapper", help="the model set's swapper role to swap with (default "
                                                           "swapper; the manifest may declare hyperswap, simswap, ...)")
    fuse.add_argument("--swapper-weight", type=float, default=0.5,
                      help="0-1: move the source identity toward (0) or away from (1) the target's; 0.5 leaves it")
    fuse.add_argument("--enhancer", help="with --enhance: the model set's enhancer role to run (default enhancer)")
    fuse.add_argument("--enhancer-blend", type=int, help="with --enhance: percent of the enhanced face, 0-100 "
                                                         "(default 80)")
    fuse.add_argument("--enhancer-weight", type=float, help="with --enhance and a codeformer enhancer: fidelity "
                                                            "0-1 (default 0.5)")
    angles_help = ("comma-separated angles of 0, 90, 180, 270: detect on copies of the target rotated "
                   "counter-clockwise by each (0: as it is; the default)")
    fuse.add_argument("--detector-angles", help=angles_help)
    fuse.add_argument("--crf", type=int, default=18, help="video: encoder quality, 0 (lossless) to 51 (default 18)")
    fuse.add_argument("--preset", default="veryfast", help="video: encoder speed, ultrafast .. veryslow (default veryfast)")
    fuse.add_argument("--codec", help="video: libx264, libx265, libvpx-vp9, h264_nvenc or hevc_nvenc "
                                      "(default: by OUT's extension, H.264 for .mp4/.mov/.mkv, VP9 for .webm)")
    fuse.set_defaults(run=_fuse)
    detect = sub.add_parser("detect", help="print the faces found in an image as JSON")
    detect.add_argument("image")
    detect.add_argument("--detector-angles", help=angles_help)
    detect.set_defaults(run=_detect)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)  # exits 2 on usage errors
    try:
        return args.run(args)
    except CliError as exc:
        message, code = exc.message, exc.code
    except InvalidOptions as exc:  # found only once faces are known: an --index beyond the faces found
        message, code = exc.message, EXIT_USAGE
    except ModelSetInvalid as exc:  # a file that changed between verification and loading
        message, code = exc.message, EXIT_MODELS
    except RuntimeFailure as exc:
        message, code = exc.message, EXIT_RUNTIME
    except (ImageError, PipelineError) as exc:
        message, code = exc.message, EXIT_IMAGE
    except BrokenPipeError:  # `... | head`: the reader has gone, which is not our failure
        sys.stdout = None  # type: ignore[assignment]  # nothing more to flush at exit
        return EXIT_OK
    print(f"error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
