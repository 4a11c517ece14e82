"""The pipeline's public entry: `Fuser` fuses faces with a loaded model bundle.

One Fuser per process holds one session per model, shared by all request threads (ONNX Runtime's
`run` is thread-safe). Loading is the loader's job (`pipeline.loader`); the warm-up drives it in the
serving process (never before a fork: CUDA is not fork-safe). Callers hand in bytes and options and
get encoded bytes and a report back, so no caller decodes or encodes images itself.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, cast

import numpy as np

from . import overlap
from .angles import DEFAULT_DETECTOR_ANGLES, detect_at_angles
from .boost import boost_factor
from .config import ImageLimits
from .errors import (
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
from .images import DecodedImage, JpegCodec, decode_image, encode_image
from .masks import MaskOptions
from .models import ArcFaceEmbedder, FaceEnhancer, FaceOccluder, FaceParser, FaceSwapper, ScrfdDetector
from .models.enhancer import pick_enhancer
from .models.swapper import swapper_roles
from .overlap import Pending
from .paste import paste_all
from .selection import choose, eligible, order_faces
from .sources import SourceFaces, SourceInput, check_count, identify, largest_face, source_key
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
def runtime_failures() -> Iterator[None]:
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

    def __init__(self, models: ModelBundle, limits: ImageLimits | None = None, codec: JpegCodec | None = None) -> None:
        """`codec`: the JPEG codec IMAGE_CODEC chose (None: OpenCV), used for complete JPEGs and JPEG output."""
        self.models = models
        self.limits = limits or ImageLimits()
        self.codec = codec
        self.detector = cast(ScrfdDetector, models.role("detector"))
        self.embedder = cast(ArcFaceEmbedder, models.role("recognizer"))
        self.swappers = swapper_roles(models.models)  # by role; option `swapper` picks one
        self.swapper = self.swappers["swapper"]
        self.enhancer = cast(FaceEnhancer | None, models.role("enhancer"))
        self.occluder = cast(FaceOccluder | None, models.role("occluder"))
        self.parser = cast(FaceParser | None, models.role("face_parser"))
        # a new source beside the target (pipeline/overlap.py) only where the detector runs on a GPU: on the
        # CPU its runs use every core, and two side by side were 1.11x slower (bench/source_overlap.py)
        self.sources_beside = models.active.get("detector", ["CPUExecutionProvider"])[0] != "CPUExecutionProvider"
        self._sources: OrderedDict[str, tuple[SourceFaces, np.ndarray]] = OrderedDict()
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
            return decode_image(data, self.limits, self.codec)
        with _about(image):
            return decode_image(data, self.limits, self.codec)

    def _detector_at(self, angles: tuple[int, ...]) -> Callable[[np.ndarray], list[Face]]:
        """Detection on a BGR image's copies rotated by `angles` (the source and reference faces')."""
        return functools.partial(detect_at_angles, self.detector.detect, angles=angles)

    def detect(self, image: DecodedImage, angles: tuple[int, ...] = DEFAULT_DETECTOR_ANGLES) -> list[Face]:
        """Faces in the image (on its copies rotated by `angles`), ordered left to right (the order
        `index` refers to)."""
        return order_faces(detect_at_angles(self.detector.detect, image.bgr, angles))

    def _cached_source(self, key: str | None) -> tuple[SourceFaces, np.ndarray] | None:
        if key is None:
            return None
        with self._sources_lock:
            hit = self._sources.get(key)
            if hit is not None:
                self._sources.move_to_end(key)
            return hit

    @staticmethod
    def _cache_key(key: str, swapper: str, angles: tuple[int, ...]) -> str:
        return f"{swapper}:{','.join(map(str, angles))}:{key}"

    def swapper_for(self, role: str) -> FaceSwapper:
        """The swapper of manifest role `role` (option `swapper`); InvalidOptions naming it otherwise."""
        swapper = self.swappers.get(role)
        if swapper is None:
            raise InvalidOptions(f"swapper must be a swapper role of this model set ({', '.join(sorted(self.swappers))}), "
                                 f"got {role!r}")
        return swapper

    def source_face(self, source: SourceInput | Sequence[SourceInput], timer: StageTimer, key: str | None = None,
                    swapper: str = "swapper", angles: tuple[int, ...] = DEFAULT_DETECTOR_ANGLES,
                    ) -> tuple[SourceFaces, np.ndarray]:
        """The source faces (one or several images, averaged: pipeline/sources.py) and the `swapper`
        role's source input for them; cached by `key` (a content hash of the whole list) and the role.

        A source may be a callable that decodes the image, so a cached source is never decoded.
        """
        model = self.swapper_for(swapper)
        cache_key = None if key is None else self._cache_key(key, swapper, angles)
        hit = self._cached_source(cache_key)
        if hit is not None:
            return hit
        sources = list(source) if isinstance(source, (list, tuple)) else [source]
        try:
            identity, faces = identify(sources, self._detector_at(angles), self.embedder, timer)
        except NoSourceFace as exc:
            if angles != DEFAULT_DETECTOR_ANGLES:  # the source was searched as asked, perhaps not upright
                exc.message += f" (searched at detector_angles {','.join(map(str, angles))}; 0 is upright)"
                exc.args = (exc.message,)
            raise
        with timer.stage("embed"):
            prepared = model.prepare_source(identity)
        if cache_key is not None:
            with self._sources_lock:
                self._sources[cache_key] = (faces, prepared)
                while len(self._sources) > _SOURCE_CACHE_SIZE:
                    self._sources.popitem(last=False)
        return faces, prepared

    # -- fusion ---------------------------------------------------------------------------------
    def fuse(
        self,
        source: SourceInput | Sequence[SourceInput],
        target: DecodedImage,
        options: FuseOptions | None = None,
        timer: StageTimer | None = None,
        source_key: str | None = None,
        faces: list[Face] | None = None,
    ) -> FusionResult:
        """Swap the source's largest face (or the average of several sources') into the selected faces of the target.

        `faces`: the target's faces when the caller has them (video: detected and smoothed across
        frames, ordered as `detect` orders them); detection is then skipped."""
        options = options or FuseOptions()
        timer = timer or StageTimer()
        # with the target's faces at hand there is nothing to do meanwhile: the source is made inline
        pending = self.start_source(source, options, timer, source_key, beside=faces is None)
        try:
            with runtime_failures():
                return self._fuse(pending, target, options, timer, faces)
        finally:
            pending.settle()

    def start_source(self, source: SourceInput | Sequence[SourceInput], options: FuseOptions, timer: StageTimer,
                     key: str | None, beside: bool = True) -> Pending[tuple[SourceFaces, np.ndarray]]:
        """`source_face` for `options`: from the cache, else (`beside`, on a GPU) on a helper thread while the
        caller decodes and detects the target (pipeline/overlap.py), else when the fusion needs it."""
        hit = self._cached_source(None if key is None else self._cache_key(key, options.swapper, options.detector_angles))
        if hit is not None:
            return overlap.ready(hit)
        make = partial(self.source_face, source, timer, key, options.swapper, options.detector_angles)
        return overlap.start(make) if beside and self.sources_beside else overlap.inline(make)

    def _fuse(
        self, source: Pending[tuple[SourceFaces, np.ndarray]], target: DecodedImage, options: FuseOptions,
        timer: StageTimer, faces: list[Face] | None = None, owned: bool = False,
    ) -> FusionResult:
        """`owned`: the target was decoded for this fusion alone, so the faces are pasted into its pixels
        instead of a copy (a 1080p copy is 6 MB written per request, a 4K one 25 MB); every crop is cut
        from them before the first paste."""
        boost, swapper, enhancer = self._plan(options)
        selection = options.selection
        if not source.on_helper:  # in turn: the source first, as it always was (a bad one fails fast)
            source.result()
        if faces is None:
            try:
                with timer.stage("detect"):
                    faces = self.detect(target, options.detector_angles)
            except Exception:
                source.result()  # the source's problem, if it has one, is named first, as made in turn
                raise
        src_faces, latent = source.result()
        candidates = eligible(faces, selection.min_face_size)
        if not candidates:
            detail = f" of at least {selection.min_face_size} px" if faces else ""
            raise NoTargetFace(f"no face{detail} was found in the target image ({len(faces)} detected)")
        reference = None
        if selection.mode == "reference":
            reference = self.reference_embedding(options.reference, timer, options.detector_angles)
            with timer.stage("embed"):  # every candidate in one run when the graph has a batch axis
                embeddings = self.embedder.embed_many(target.bgr, [faces[i] for i in candidates])
                for i, embedding in zip(candidates, embeddings, strict=True):
                    faces[i].embedding = embedding
        chosen = choose(faces, selection, candidates, reference)
        chosen_faces = [faces[i] for i in chosen]
        latents = self._balanced(swapper, latent, target, chosen_faces, options.swapper_weight, timer)
        frame = target.bgr if owned and target.bgr.flags.writeable else target.bgr.copy()
        self._swap_faces(target.bgr, frame, chosen_faces, latents, boost, options.masks, timer, swapper)
        if enhancer is not None:
            with timer.stage("enhance"):  # faces whose regions do not meet in one run each (FaceEnhancer)
                enhancer.enhance_many_into(frame, chosen_faces, options.enhancement, options.masks,
                                           self.occluder, self.models.batch_max)
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
            source_face=src_faces.first,
            sources=src_faces.faces,
            sources_skipped=src_faces.skipped,
            swapper=options.swapper,
            model_version=self.model_version,
            enhanced=bool(options.enhance and chosen),
            timings_ms=timer.rounded(),
            width=target.width,
            height=target.height,
        )
        return FusionResult(image=DecodedImage(bgr=frame, alpha=target.alpha, source_format=target.source_format), report=report)

    def check_options(self, options: FuseOptions) -> int:
        """The boost factor; InvalidOptions for what this model set cannot serve: a swapper or enhancer
        role it lacks, a boost the swapper's size does not divide, a mask without its model. A video job
        asks this before it answers 202, so its segments cannot fail on it later."""
        return self._plan(options)[0]

    def _plan(self, options: FuseOptions) -> tuple[int, FaceSwapper, FaceEnhancer | None]:
        """The boost factor, the swapper and the enhancer (None without `enhance`) the options pick,
        each looked up once per fusion; InvalidOptions as `check_options` says."""
        enhancer = pick_enhancer(self.models.models, options.enhancement) if options.enhance else None
        swapper = self.swapper_for(options.swapper)
        boost = boost_factor(options.pixel_boost, swapper.input_size)
        types = options.masks.types
        if "occlusion" in types and self.occluder is None:
            raise InvalidOptions("mask=occlusion was requested but this model set has no occluder")
        if "region" in types and self.parser is None:
            raise InvalidOptions("mask=region was requested but this model set has no face_parser")
        return boost, swapper, enhancer

    def _balanced(self, swapper: FaceSwapper, latent: np.ndarray, target: DecodedImage, faces: list[Face],
                  weight: float, timer: StageTimer) -> np.ndarray:
        """The source input per chosen face after `swapper_weight` (one shared row at the default 0.5)."""
        if weight == 0.5 or not swapper.takes_embedding or not faces:
            return latent
        with timer.stage("embed"):
            raws = np.stack(self.embedder.embed_raw_many(target.bgr, faces))  # one run
        return swapper.balance_source(latent, raws, weight)

    def _swap_faces(self, image: np.ndarray, frame: np.ndarray, faces: list[Face], latents: np.ndarray, boost: int,
                    masks: MaskOptions, timer: StageTimer, swapper: FaceSwapper) -> None:
        """Swap `faces` of `image` at `boost` times the swapper's size and paste each into `frame`.

        `latents`: one source row for all faces, or one per face (after swapper_weight). All faces go to
        the swapper in one call (one run with a free batch axis), in chunks of at most BATCH_MAX crops
        (tiles at a boost): 29 faces cost one run, not 29 (bench/batching.py).
        """
        per_run = max(1, self.models.batch_max // (boost * boost))
        per_face = len(latents) == len(faces)
        with timer.stage("swap"):
            aligned = [swapper.align(image, face, boost) for face in faces]
            swapped: list[np.ndarray] = []
            for start in range(0, len(aligned), per_run):
                rows = latents[start:start + per_run] if per_face else latents[:1]
                swapped += swapper.swap_crops([a for a, _ in aligned[start:start + per_run]], rows, boost)
        pastes = []
        for (crop, matrix), out in zip(aligned, swapped, strict=True):
            crop_masks = []
            if "occlusion" in masks.types and self.occluder is not None:
                with timer.stage("mask"):  # of the target's face, before the swap: what covers it stays
                    crop_masks.append(self.occluder.occlusion(crop))
            if "region" in masks.types and self.parser is not None:
                with timer.stage("mask"):  # of the swapped face, as FaceFusion parses it
                    crop_masks.append(self.parser.regions(out, masks.regions))
            pastes.append((out, matrix, crop_masks))
        with timer.stage("paste"):  # disjoint faces side by side (pipeline/paste.py)
            paste_all(frame, pastes, masks)

    def reference_embedding(self, reference: bytes | DecodedImage | np.ndarray | None, timer: StageTimer,
                            angles: tuple[int, ...] = DEFAULT_DETECTOR_ANGLES) -> np.ndarray:
        """The normalised embedding of the reference image's largest face (faces=reference). An
        embedding given is returned as it is: a video computes it once for all its frames."""
        if reference is None:
            raise InvalidOptions("faces=reference needs a reference image")
        if isinstance(reference, np.ndarray):
            return reference
        if isinstance(reference, bytes):
            with timer.stage("decode"):
                reference = self.decode(reference, "reference")
        largest = largest_face(reference.bgr, self._detector_at(angles), self.embedder, timer)
        if largest is None:
            raise NoReferenceFace("no face was found in the reference image")
        return largest[0].embedding

    def fuse_bytes(self, source: bytes | Sequence[bytes], target: bytes, options: FuseOptions | None = None,
                   timer: StageTimer | None = None) -> EncodedFusion:
        """Decode, fuse and encode as the options say; the source faces are cached by the bytes' hashes.

        `source`: one image, or a list of up to 8 whose faces are averaged."""
        options = options or FuseOptions()
        timer = timer or StageTimer()
        blobs = [source] if isinstance(source, bytes) else list(source)
        check_count(len(blobs))
        # a source not seen before is decoded, detected and embedded beside the target's decode and detection
        pending = self.start_source([partial(decode_image, blob, self.limits, self.codec) for blob in blobs], options,
                                    timer, source_key(blobs))
        try:
            with timer.stage("decode"):
                tgt = self.decode(target, "target")
            with runtime_failures():
                result = self._fuse(pending, tgt, options, timer, owned=True)
        finally:  # a request that failed meanwhile ends with its source work, inside its admission
            pending.settle()
        with timer.stage("encode"):
            data, media_type = encode_image(result.image, options.output_format, options.quality, self.codec)
        result.report.timings_ms = timer.rounded()
        return EncodedFusion(data=data, media_type=media_type, report=result.report)

    # -- warm-up ----------------------------------------------------------------------------------
    def exercise(self) -> dict[str, float]:
        """Run every model once so kernels and arenas settle before traffic (pipeline/exercise.py)."""
        from .exercise import exercise

        return exercise(self)
