"""The warm-up's first run of every model, before the pod takes traffic.

A model's first run is much slower than the next ones (on CUDA: cuDNN plans, kernels loaded on first
use, the arena growing; on an H100 0.8-1.1 s for the three models one after the other), and a request
must not pay it. The first runs of different models do not depend on each other, and they are native
work that releases the GIL, so they run side by side: the detector, each enhancer, and the chain that
needs a source identity (recognizer, then every swapper role and the maskers on the swapper's crop).
The warm-up then takes about as long as its longest chain instead of the sum. With
CUDA_CONV_ALGO_SEARCH=EXHAUSTIVE they run one after the other (`ModelBundle.first_runs_together`): cuDNN
then times every algorithm, and runs side by side would time each other.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from .faces import Face
from .identity import SourceIdentity
from .masks import DEFAULT_MASKS
from .models.enhancer import enhancer_roles
from .timing import StageTimer

if TYPE_CHECKING:
    from .fuser import Fuser

# a mid-grey 720p frame with a plausible face where the five points say: enough to run every model
FRAME_SHAPE = (720, 1280, 3)
FACE = Face(
    bbox=np.array([560, 280, 720, 480], np.float32),
    score=1.0,
    kps=np.array([[600, 350], [680, 350], [640, 390], [610, 430], [670, 430]], np.float32),
)


def _identity_chain(fuser: Fuser, frame: np.ndarray, timer: StageTimer) -> None:
    """Recognizer, then every swapper role a request may pick, then the maskers on the swapper's crop."""
    with timer.stage("embed"):
        identity = SourceIdentity.average([(FACE, fuser.embedder.embed_raw(frame, FACE), frame)])
        sources = {role: model.prepare_source(identity) for role, model in fuser.swappers.items()}
    swapper = fuser.swapper
    aligned, _ = swapper.align(frame, FACE)  # one alignment for the default swapper and the maskers
    with timer.stage("swap"):
        for role, model in fuser.swappers.items():
            model.swap_crop(aligned if model is swapper else model.align(frame, FACE)[0], sources[role])
    if fuser.occluder is not None or fuser.parser is not None:
        with timer.stage("mask"):
            if fuser.occluder is not None:
                fuser.occluder.occlusion(aligned)
            if fuser.parser is not None:
                fuser.parser.regions(aligned, DEFAULT_MASKS.regions)


def exercise(fuser: Fuser) -> dict[str, float]:
    """Run every model of `fuser` once, the independent ones side by side; ms per stage (each stage's own
    time, so their sum exceeds the wall time when they overlapped). Any model's failure is raised."""
    frame = np.full(FRAME_SHAPE, 127, dtype=np.uint8)
    tasks: list[tuple[str | None, Callable[[StageTimer], object]]] = [
        ("detect", lambda timer: fuser.detector.detect(frame)),
        (None, lambda timer: _identity_chain(fuser, frame, timer)),
    ]
    for enhancer in enhancer_roles(fuser.models.models).values():  # every enhancer role a request may pick
        tasks.append(("enhance", lambda timer, enhancer=enhancer: enhancer.enhance(frame, FACE)))
    timers = [StageTimer() for _ in tasks]

    def run(index: int) -> None:
        stage, work = tasks[index]
        timer = timers[index]
        if stage is None:
            work(timer)
        else:
            with timer.stage(stage):
                work(timer)

    workers = len(tasks) if fuser.models.first_runs_together else 1
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="exercise") as pool:
        for future in [pool.submit(run, index) for index in range(len(tasks))]:
            future.result()
    total = StageTimer()
    for timer in timers:
        for name, ms in timer.ms.items():
            total.add(name, ms)
    return total.rounded()
