"""The pipeline's public entry: `Fuser` loads a model set and fuses faces.

One Fuser per process holds one session per model, shared by all request threads (ONNX Runtime's
`run` is thread-safe). Nothing is loaded at import or construction: `load()` runs in the serving
process after gunicorn forks (CUDA is not fork-safe), driven by the warm-up.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .artefacts import build_optimised, fast_load_options, optimised_path
from .config import Settings
from .detect import ScrfdDetector
from .embed import ArcFaceEmbedder
from .enhance import FaceEnhancer
from .errors import (
    InvalidOptions,
    ModelSetInvalid,
    NoReferenceFace,
    NoSourceFace,
    NoTargetFace,
    PipelineError,
    RuntimeFailure,
)
from .faces import Face
from .images import DecodedImage, decode_image, encode_image
from .model_store import ModelEntry, ModelSet, open_model_set
from .paste import paste_back
from .selection import Selection, choose, eligible, order_faces
from .sessions import create_session, provider_options, resolve_providers
from .swap import InSwapper, load_emap
from .timing import StageTimer

log = logging.getLogger(__name__)

_SOURCE_CACHE_SIZE = 64


@dataclass
class FuseOptions:
    """What a caller may ask of one fusion."""

    selection: Selection = field(default_factory=Selection)
    enhance: bool = False
    reference: DecodedImage | None = None


@dataclass
class FusionReport:
    """What happened, for the caller: faces found and swapped, boxes, scores, stage timings."""

    faces_found: int
    faces_swapped: int
    faces: list[dict[str, Any]]
    source_face: dict[str, Any]
    model_version: str
    enhanced: bool
    timings_ms: dict[str, float]
    width: int
    height: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class FusionResult:
    image: DecodedImage
    report: FusionReport


@dataclass
class EncodedFusion:
    data: bytes
    media_type: str
    report: FusionReport


def _is_runtime_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("onnxruntime")


class Fuser:
    """Face fusion with one model set. Create once per process; call `load()` before use."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self._lock = threading.Lock()
        self._model_set: ModelSet | None = None
        self.providers: list[str] = []
        self.detector: ScrfdDetector | None = None
        self.embedder: ArcFaceEmbedder | None = None
        self.swapper: InSwapper | None = None
        self.enhancer: FaceEnhancer | None = None
        self.load_log: list[str] = []
        self._sources: OrderedDict[str, tuple[Face, np.ndarray]] = OrderedDict()
        self._sources_lock = threading.Lock()

    # -- loading ---------------------------------------------------------------------------------
    @property
    def model_version(self) -> str:
        return self._model_set.version if self._model_set else self.settings.model_version

    def _artefacts(self, model_set: ModelSet, providers: list[str], cache_dir: Path) -> tuple[np.ndarray, dict[str, Path], list[str]]:
        """The swapper's emap and an optimised graph per role, building what is missing, one at a time
        (building holds a whole model in memory). A role whose graph cannot be built is absent from
        the map and loads from the original model: a read-only or full cache must not stop serving."""
        built = []
        swp = model_set.models["swapper"]
        emap, made = load_emap(swp.path, swp.sha256, cache_dir)
        if made:
            built.append(f"emap side file for {swp.path.name}")
        graphs: dict[str, Path] = {}
        if self.settings.optimised_graphs:
            for role, entry in model_set.models.items():
                path = optimised_path(entry, providers, cache_dir)
                if not path.is_file():
                    try:
                        build_optimised(entry, providers, cache_dir)
                    except Exception as exc:  # the runtime and the filesystem raise many types here
                        log.warning("cannot build an optimised graph for %s: %s", entry.path.name, exc)
                        continue
                    built.append(f"optimised graph for {entry.path.name}")
                graphs[role] = path
        return emap, graphs, built

    def prepare(self) -> list[str]:
        """Build every derived artefact that is missing (what `python -m warmup prepare` runs)."""
        cache_dir = self.settings.resolved_cache_path()
        model_set = open_model_set(self.settings.model_dir, cache_dir)
        return self._artefacts(model_set, resolve_providers(self.settings.execution_providers), cache_dir)[2]

    def _session(self, entry: ModelEntry, graph: Path | None, cache_dir: Path, options: list[dict]) -> ort.InferenceSession:
        if graph is None:
            return create_session(entry.path, self.providers, provider_options=options)
        try:
            return create_session(graph, self.providers, options=fast_load_options(), provider_options=options)
        except ModelSetInvalid:
            # a damaged artefact (a cache volume filled up mid-write, say): rebuild it once from the model
            log.warning("the optimised graph %s cannot be loaded; rebuilding it", graph)
            shutil.rmtree(graph.parent, ignore_errors=True)
            build_optimised(entry, self.providers, cache_dir)
            self.load_log.append(f"rebuilt a damaged optimised graph for {entry.path.name}")
            return create_session(graph, self.providers, options=fast_load_options(), provider_options=options)

    def load(self) -> ModelSet:
        """Verify the model set and create every session; safe to call from several threads.

        Artefacts come first; the sessions are then created in parallel (the runtime releases the GIL
        while it loads, and on GPUs each creation initialises kernels)."""
        with self._lock:
            if self._model_set is not None:
                return self._model_set
            cache_dir = self.settings.resolved_cache_path()
            model_set = open_model_set(self.settings.model_dir, cache_dir)
            self.providers = resolve_providers(self.settings.execution_providers)
            emap, graphs, built = self._artefacts(model_set, self.providers, cache_dir)
            if built:
                self.load_log.append(f"built {', '.join(built)} (run `python -m warmup prepare` to do this ahead)")
            options = provider_options(self.providers, cache_dir)
            with ThreadPoolExecutor(max_workers=len(model_set.models), thread_name_prefix="session") as pool:
                futures = {role: pool.submit(self._session, entry, graphs.get(role), cache_dir, options)
                           for role, entry in model_set.models.items()}
                sessions = {role: future.result() for role, future in futures.items()}
            det = model_set.models["detector"]
            self.detector = ScrfdDetector(sessions["detector"], input_size=det.input_size or (640, 640))
            rec = model_set.models["recognizer"]
            self.embedder = ArcFaceEmbedder(sessions["recognizer"], input_size=(rec.input_size or (112, 112))[0])
            swp = model_set.models["swapper"]
            self.swapper = InSwapper(sessions["swapper"], emap, input_size=(swp.input_size or (128, 128))[0])
            if "enhancer" in sessions:
                enh = model_set.models["enhancer"]
                self.enhancer = FaceEnhancer(sessions["enhancer"], input_size=(enh.input_size or (512, 512))[0])
            self._model_set = model_set
            log.info("model set %s (%s) loaded with %s", model_set.name, model_set.version, self.providers)
            return model_set

    def _require(self) -> tuple[ScrfdDetector, ArcFaceEmbedder, InSwapper]:
        if self.detector is None or self.embedder is None or self.swapper is None:
            self.load()
        assert self.detector and self.embedder and self.swapper
        return self.detector, self.embedder, self.swapper

    # -- building blocks ---------------------------------------------------------------------------
    def decode(self, data: bytes) -> DecodedImage:
        return decode_image(data, self.settings.limits)

    def detect(self, image: DecodedImage) -> list[Face]:
        """Faces in the image, ordered left to right (the order `index` refers to)."""
        detector, _, _ = self._require()
        return order_faces(detector.detect(image.bgr))

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
        image = source
        detector, embedder, swapper = self._require()
        with timer.stage("detect"):
            faces = detector.detect(image.bgr)
        if not faces:
            raise NoSourceFace("no face was found in the source image")
        face = max(faces, key=lambda f: f.area)
        with timer.stage("embed"):
            face.embedding = embedder.embed(image.bgr, face)
            latent = swapper.latent(face.embedding)
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
    ) -> FusionResult:
        """Swap the source's largest face into the selected faces of the target."""
        options = options or FuseOptions()
        timer = timer or StageTimer()
        try:
            return self._fuse(source, target, options, timer, source_key)
        except PipelineError:
            raise
        except Exception as exc:
            if _is_runtime_error(exc):
                raise RuntimeFailure(f"the inference runtime failed: {exc}") from exc
            raise

    def _fuse(
        self, source: DecodedImage | Callable[[], DecodedImage], target: DecodedImage, options: FuseOptions, timer: StageTimer, source_key: str | None
    ) -> FusionResult:
        detector, embedder, swapper = self._require()
        if options.enhance and self.enhancer is None:
            raise InvalidOptions("enhance was requested but this model set has no enhancer")
        selection = options.selection
        src_face, latent = self.source_face(source, timer, source_key)
        with timer.stage("detect"):
            faces = order_faces(detector.detect(target.bgr))
        candidates = eligible(faces, selection.min_face_size)
        if not candidates:
            detail = f" of at least {selection.min_face_size} px" if faces else ""
            raise NoTargetFace(f"no face{detail} was found in the target image ({len(faces)} detected)")
        reference = None
        if selection.mode == "reference":
            reference = self._reference_embedding(options.reference, timer)
            with timer.stage("embed"):
                for i in candidates:
                    faces[i].embedding = embedder.embed(target.bgr, faces[i])
        chosen = choose(faces, selection, candidates, reference)
        frame = target.bgr.copy()
        for i in chosen:
            with timer.stage("swap"):
                swapped, matrix = swapper.swap(target.bgr, faces[i], latent)
            with timer.stage("paste"):
                paste_back(frame, swapped, matrix)
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

    def _reference_embedding(self, reference: DecodedImage | None, timer: StageTimer) -> np.ndarray:
        if reference is None:
            raise InvalidOptions("faces=reference needs a reference image")
        detector, embedder, _ = self._require()
        with timer.stage("detect"):
            faces = detector.detect(reference.bgr)
        if not faces:
            raise NoReferenceFace("no face was found in the reference image")
        face = max(faces, key=lambda f: f.area)
        with timer.stage("embed"):
            return embedder.embed(reference.bgr, face)

    def fuse_bytes(
        self,
        source: bytes,
        target: bytes,
        options: FuseOptions | None = None,
        output_format: str = "jpeg",
        quality: int = 92,
        timer: StageTimer | None = None,
    ) -> EncodedFusion:
        """Decode, fuse and encode; the source's face is cached by the hash of its bytes."""
        timer = timer or StageTimer()
        with timer.stage("decode"):
            tgt = self.decode(target)
        result = self.fuse(lambda: self.decode(source), tgt, options, timer, source_key=hashlib.sha256(source).hexdigest())
        with timer.stage("encode"):
            data, media_type = encode_image(result.image, output_format, quality)
        result.report.timings_ms = timer.rounded()
        return EncodedFusion(data=data, media_type=media_type, report=result.report)

    # -- warm-up ----------------------------------------------------------------------------------
    def exercise(self) -> dict[str, float]:
        """Run every model once on representative inputs so kernels and arenas settle before traffic."""
        detector, embedder, swapper = self._require()
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
        with timer.stage("swap"):
            swapper.swap(frame, face, latent)
        if self.enhancer is not None:
            with timer.stage("enhance"):
                self.enhancer.enhance(frame, face)
        return timer.rounded()
