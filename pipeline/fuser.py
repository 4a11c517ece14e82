"""The pipeline's public entry: `Fuser` fuses faces with a loaded model bundle.

One Fuser per process holds one session per model, shared by all request threads (ONNX Runtime's
`run` is thread-safe). Loading is the loader's job (`pipeline.loader`); the warm-up drives it in the
serving process (never before a fork: CUDA is not fork-safe). Callers hand in bytes and options and
get encoded bytes and a report back, so no caller decodes or encodes images itself.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

import numpy as np

from .boost import boost_factor
from .config import ImageLimits
from .errors import (
    FaceError,
    ImageError,
    InvalidOptions,
    NoReferenceFace,
    NoSourceFace,
    NoTargetFace,
    PipelineError,
    RuntimeFailure,
)
from .faces import Face
from .fusion_types import EncodedFusion, FuseOptions, FusionReport, FusionResult
from .images import DecodedImage, decode_image, encode_image
from .masks import DEFAULT_MASKS, MaskOptions
from .models import ArcFaceEmbedder, FaceEnhancer, FaceOccluder, FaceParser, InSwapper, ScrfdDetector
from .paste import paste_back
from .selection import choose, eligible, order_faces
from .timing import StageTimer

if TYPE_CHECKING:  # the loader builds Fusers; this module only uses its bundle
    from .loader import ModelBundle

_SOURCE_CACHE_SIZE = 64


@contextmanager
def _about(image: str) -> Iterator[None]:
    """Image errors raised inside name the input they are about (source, target, reference)."""
    try:
        yield
    except ImageError as exc:
        exc.about(image)
        raise


@contextmanager
def _runtime_failures() -> Iterator[None]:
    """The runtime's own exceptions (GPU out of memory, say) as RuntimeFailure: worth a retry."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as exc:
        if type(exc).__module__.startswith("onnxruntime"):
            raise RuntimeFailure(f"the inference runtime failed: {exc}") from exc
        raise


class Fuser:
    """Face fusion with one loaded model bundle; build it with `pipeline.load_fuser(settings)`."""

    def __init__(self, models: ModelBundle, limits: ImageLimits | None = None) -> None:
        self.models = models
        self.limits = limits or ImageLimits()
        self.detector = cast(ScrfdDetector, models.role("detector"))
        self.embedder = cast(ArcFaceEmbedder, models.role("recognizer"))
        self.swapper = cast(InSwapper, models.role("swapper"))
        self.enhancer = cast(FaceEnhancer | None, models.role("enhancer"))
        self.occluder = cast(FaceOccluder | None, models.role("occluder"))
        self.parser = cast(FaceParser | None, models.role("face_parser"))
        self._sources: OrderedDict[str, tuple[Face, np.ndarray]] = OrderedDict()
        self._sources_lock = threading.Lock()

    @property
    def model_version(self) -> str:
        return self.models.version

    @property
    def load_log(self) -> list[str]:
        return self.models.load_log

    # -- building blocks ---------------------------------------------------------------------------
    def decode(self, data: bytes, image: str | None = None) -> DecodedImage:
        """Decode with the limits; `image` (source, target, reference) is named by any image error."""
        if image is None:
            return decode_image(data, self.limits)
        with _about(image):
            return decode_image(data, self.limits)

    def detect(self, image: DecodedImage) -> list[Face]:
        """Faces in the image, ordered left to right (the order `index` refers to)."""
        return order_faces(self.detector.detect(image.bgr))

    def _largest_face(self, image: DecodedImage, timer: StageTimer, missing: type[FaceError], what: str) -> Face:
        """Detect, take the largest face and embed it: the source face and the reference face alike."""
        with timer.stage("detect"):
            faces = self.detector.detect(image.bgr)
        if not faces:
            raise missing(f"no face was found in the {what} image")
        face = max(faces, key=lambda f: f.area)
        with timer.stage("embed"):
            face.embedding = self.embedder.embed(image.bgr, face)
        return face

    def _cached_source(self, key: str | None) -> tuple[Face, np.ndarray] | None:
        if key is None:
            return None
        with self._sources_lock:
            hit = self._sources.get(key)
            if hit is not None:
                self._sources.move_to_end(key)
            return hit

    def source_face(
        self, source: DecodedImage | Callable[[], DecodedImage], timer: StageTimer, key: str | None = None
    ) -> tuple[Face, np.ndarray]:
        """The largest face of the source and its swapper latent; cached by `key` (a content hash).

        `source` may be a callable that decodes the image, so a cached source is never decoded.
        """
        hit = self._cached_source(key)
        if hit is not None:
            return hit
        if callable(source):
            with timer.stage("decode"):
                source = source()
        face = self._largest_face(source, timer, NoSourceFace, "source")
        with timer.stage("embed"):
            latent = self.swapper.latent(face.embedding)
        if key is not None:
            with self._sources_lock:
                self._sources[key] = (face, latent)
                while len(self._sources) > _SOURCE_CACHE_SIZE:
                    self._sources.popitem(last=False)
        return face, latent

    # -- fusion ---------------------------------------------------------------------------------
    def fuse(
        self,
        source: DecodedImage | Callable[[], DecodedImage],
        target: DecodedImage,
        options: FuseOptions | None = None,
        timer: StageTimer | None = None,
        source_key: str | None = None,
        faces: list[Face] | None = None,
    ) -> FusionResult:
        """Swap the source's largest face into the selected faces of the target.

        `faces`: the target's faces when the caller has them (video: detected and smoothed across
        frames, ordered as `detect` orders them); detection is then skipped."""
        options = options or FuseOptions()
        timer = timer or StageTimer()
        with _runtime_failures():
            return self._fuse(source, target, options, timer, source_key, faces)

    def _fuse(
        self, source: DecodedImage | Callable[[], DecodedImage], target: DecodedImage, options: FuseOptions, timer: StageTimer, source_key: str | None,
        faces: list[Face] | None = None,
    ) -> FusionResult:
        if options.enhance and self.enhancer is None:
            raise InvalidOptions("enhance was requested but this model set has no enhancer")
        boost = self.check_quality_options(options)
        selection = options.selection
        src_face, latent = self.source_face(source, timer, source_key)
        if faces is None:
            with timer.stage("detect"):
                faces = self.detect(target)
        candidates = eligible(faces, selection.min_face_size)
        if not candidates:
            detail = f" of at least {selection.min_face_size} px" if faces else ""
            raise NoTargetFace(f"no face{detail} was found in the target image ({len(faces)} detected)")
        reference = None
        if selection.mode == "reference":
            reference = self._reference_embedding(options.reference, timer)
            with timer.stage("embed"):
                for i in candidates:
                    faces[i].embedding = self.embedder.embed(target.bgr, faces[i])
        chosen = choose(faces, selection, candidates, reference)
        frame = target.bgr.copy()
        for i in chosen:
            self._swap_face(target.bgr, frame, faces[i], latent, boost, options.masks, timer)
        if options.enhance and self.enhancer is not None:
            for i in chosen:
                with timer.stage("enhance"):
                    restored, matrix = self.enhancer.enhance(frame, faces[i])
                    paste_back(frame, restored, matrix)
        report_faces = []
        for i, face in enumerate(faces):
            entry = {"index": i, **face.as_dict(), "swapped": i in chosen}
            if selection.mode == "reference" and face.embedding is not None and reference is not None:
                entry["similarity"] = round(float(face.embedding @ reference), 4)
            report_faces.append(entry)
        report = FusionReport(
            faces_found=len(faces),
            faces_swapped=len(chosen),
            faces=report_faces,
            source_face=src_face.as_dict(),
            model_version=self.model_version,
            enhanced=bool(options.enhance and chosen),
            timings_ms=timer.rounded(),
            width=target.width,
            height=target.height,
        )
        return FusionResult(image=DecodedImage(bgr=frame, alpha=target.alpha, source_format=target.source_format), report=report)

    def check_quality_options(self, options: FuseOptions) -> int:
        """The boost factor; InvalidOptions for a boost or mask this model set cannot serve."""
        boost = boost_factor(options.pixel_boost, self.swapper.input_size)
        types = options.masks.types
        if "occlusion" in types and self.occluder is None:
            raise InvalidOptions("mask=occlusion was requested but this model set has no occluder")
        if "region" in types and self.parser is None:
            raise InvalidOptions("mask=region was requested but this model set has no face_parser")
        return boost

    def _swap_face(self, image: np.ndarray, frame: np.ndarray, face: Face, latent: np.ndarray, boost: int,
                   masks: MaskOptions, timer: StageTimer) -> None:
        """Swap one face of `image` at `boost` times the swapper's size and paste it into `frame`."""
        with timer.stage("swap"):
            aligned, matrix = self.swapper.align(image, face, boost)
            swapped = self.swapper.swap_crop(aligned, latent, boost)
        crop_masks = []
        if "occlusion" in masks.types and self.occluder is not None:
            with timer.stage("mask"):  # of the target's face, before the swap: what covers it stays
                crop_masks.append(self.occluder.occlusion(aligned))
        if "region" in masks.types and self.parser is not None:
            with timer.stage("mask"):  # of the swapped face, as FaceFusion parses it
                crop_masks.append(self.parser.regions(swapped, masks.regions))
        with timer.stage("paste"):
            paste_back(frame, swapped, matrix, masks, crop_masks)

    def _reference_embedding(self, reference: bytes | DecodedImage | None, timer: StageTimer) -> np.ndarray:
        if reference is None:
            raise InvalidOptions("faces=reference needs a reference image")
        if isinstance(reference, bytes):
            with timer.stage("decode"):
                reference = self.decode(reference, "reference")
        face = self._largest_face(reference, timer, NoReferenceFace, "reference")
        assert face.embedding is not None
        return face.embedding

    def fuse_bytes(self, source: bytes, target: bytes, options: FuseOptions | None = None,
                   timer: StageTimer | None = None) -> EncodedFusion:
        """Decode, fuse and encode as the options say; the source's face is cached by its bytes' hash."""
        options = options or FuseOptions()
        timer = timer or StageTimer()
        with timer.stage("decode"):
            tgt = self.decode(target, "target")
        result = self.fuse(lambda: self.decode(source, "source"), tgt, options, timer, source_key=hashlib.sha256(source).hexdigest())
        with timer.stage("encode"):
            data, media_type = encode_image(result.image, options.output_format, options.quality)
        result.report.timings_ms = timer.rounded()
        return EncodedFusion(data=data, media_type=media_type, report=result.report)

    # -- warm-up ----------------------------------------------------------------------------------
    def exercise(self) -> dict[str, float]:
        """Run every model once on representative inputs so kernels and arenas settle before traffic."""
        detector, embedder, swapper = self.detector, self.embedder, self.swapper
        timer = StageTimer()
        frame = np.full((720, 1280, 3), 127, dtype=np.uint8)
        face = Face(
            bbox=np.array([560, 280, 720, 480], np.float32),
            score=1.0,
            kps=np.array([[600, 350], [680, 350], [640, 390], [610, 430], [670, 430]], np.float32),
        )
        with timer.stage("detect"):
            detector.detect(frame)
        with timer.stage("embed"):
            latent = swapper.latent(embedder.embed(frame, face))
        aligned, _ = swapper.align(frame, face)  # one alignment for the swapper and the maskers
        with timer.stage("swap"):
            swapper.swap_crop(aligned, latent)
        if self.enhancer is not None:
            with timer.stage("enhance"):
                self.enhancer.enhance(frame, face)
        if self.occluder is not None or self.parser is not None:
            with timer.stage("mask"):
                if self.occluder is not None:
                    self.occluder.occlusion(aligned)
                if self.parser is not None:
                    self.parser.regions(aligned, DEFAULT_MASKS.regions)
        return timer.rounded()
