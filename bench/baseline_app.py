"""The baseline of bench/serve.py: the seed article's FastAPI `/fuse` endpoint, as written there.

insightface `FaceAnalysis` (detection + recognition on every face of both images) and
`INSwapper.get(paste_back=True)` with its full-frame paste back; OpenCV decode and encode.
Models come from BASELINE_ROOT (FaceAnalysis layout) and BASELINE_SWAPPER.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from fastapi import FastAPI, File, UploadFile
from fastapi.responses import Response
from insightface.app import FaceAnalysis
from insightface.model_zoo import get_model

app = FastAPI()
analysis = FaceAnalysis(name="standin", root=os.environ["BASELINE_ROOT"], providers=["CPUExecutionProvider"])
analysis.prepare(ctx_id=-1, det_size=(640, 640))
swapper = get_model(os.environ["BASELINE_SWAPPER"], providers=["CPUExecutionProvider"])


@app.get("/health")
def health() -> dict:
    return {"ok": True}


@app.post("/fuse")
def fuse(source: UploadFile = File(...), target: UploadFile = File(...)) -> Response:  # noqa: B008
    src = cv2.imdecode(np.frombuffer(source.file.read(), np.uint8), cv2.IMREAD_COLOR)
    tgt = cv2.imdecode(np.frombuffer(target.file.read(), np.uint8), cv2.IMREAD_COLOR)
    source_face = analysis.get(src)[0]
    result = tgt.copy()
    for face in analysis.get(tgt):
        result = swapper.get(result, face, source_face, paste_back=True)
    ok, buf = cv2.imencode(".jpg", result)
    return Response(content=buf.tobytes(), media_type="image/jpeg")
