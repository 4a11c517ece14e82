"""SCRFD face detection in one 640x640 pass.

The decoding mirrors insightface's `SCRFD.detect` (letterbox to the top-left of a 640x640 canvas,
anchor-distance boxes and keypoints, score threshold, greedy NMS) so results match the reference
implementation; tests compare the two on real photographs. insightface 2.x runs two passes by default
(128 and 640) and costs about a second of imports; one pass and our own decoder keep both the request
and the cold start short.

The pixel normalisation is insightface's (`SCRFD.__init__`: input_mean 127.5, input_std 128.0;
`SCRFD.detect`: `cv2.dnn.blobFromImage(img, 1.0/input_std, input_size, (input_mean,)*3, swapRB=True)`),
declared as `pixel_format` so that the prepared graph takes the letterboxed canvas as uint8 and does that
arithmetic itself (pipeline/pixel_input.py: CPU per request and host-to-device bytes on GPU pods). The
detector looks at its session's input when it is created: uint8 gets the canvas, float the blob
(original graphs with OPTIMISED_GRAPHS=0, or a graph whose rewrite the probe refused).
"""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np
import onnxruntime as ort

from ..faces import Face
from ..pixel_input import PixelFormat, takes_pixels
from .base import ModelKind


def _distance_to_boxes(centers: np.ndarray, dist: np.ndarray) -> np.ndarray:
    return np.concatenate([centers - dist[:, 0:2], centers + dist[:, 2:4]], axis=1)


def _distance_to_kps(centers: np.ndarray, dist: np.ndarray) -> np.ndarray:
    tiled = np.tile(centers, (1, dist.shape[1] // 2))
    return (tiled + dist).reshape(-1, dist.shape[1] // 2, 2)


def nms(dets: np.ndarray, threshold: float) -> list[int]:
    """Greedy NMS with insightface's +1 pixel area convention; `dets` rows are x1,y1,x2,y2,score."""
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size > 0:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[overlap <= threshold]
    return keep


class ScrfdDetector(ModelKind):
    """SCRFD with keypoints (the 9-output variants: 3 strides, 2 anchors per location)."""

    kind = "scrfd"
    category = "detector"
    default_input_size = (640, 640)
    pixel_format: ClassVar[PixelFormat] = PixelFormat(mean=(127.5, 127.5, 127.5), std=128.0, rgb=True)
    rows_per_request: ClassVar[bool] = False  # one frame per request: batched only by merging across requests
    fp16_pays: ClassVar[bool] = False  # slower in fp16 at batch 1 on the H100 and the H200 (models/base.py)

    strides = (8, 16, 32)
    anchors_per_location = 2

    def __init__(
        self,
        session: ort.InferenceSession,
        input_size: tuple[int, int] = (640, 640),
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
    ) -> None:
        self.session = session
        self.input_size = input_size
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.input_name = session.get_inputs()[0].name
        self.takes_pixels = takes_pixels(session)  # uint8 canvas in (a prepared graph), else the float blob
        self.output_names = [o.name for o in session.get_outputs()]
        if len(self.output_names) != 9:
            raise ValueError(f"expected an SCRFD model with 9 outputs (scores, boxes, keypoints), got {len(self.output_names)}")
        self._centers: dict[tuple[int, int, int], np.ndarray] = {}

    def _anchor_centers(self, height: int, width: int, stride: int) -> np.ndarray:
        key = (height, width, stride)
        centers = self._centers.get(key)
        if centers is None:
            grid = np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float32)
            centers = (grid * stride).reshape(-1, 2)
            centers = np.repeat(centers, self.anchors_per_location, axis=0)
            self._centers[key] = centers
        return centers

    def letterbox(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Resize keeping the aspect ratio into the top-left of the input canvas; returns canvas (BGR, uint8), scale."""
        in_w, in_h = self.input_size
        height, width = image.shape[:2]
        # at least one pixel: an image more than 640 times wider than tall (or taller than wide) would
        # otherwise be resized to nothing, which OpenCV refuses (and the request ended as a 503)
        if height / width > in_h / in_w:
            new_h, new_w = in_h, max(1, int(in_h / (height / width)))
        else:
            new_w, new_h = in_w, max(1, int(in_w * (height / width)))
        scale = new_h / height
        canvas = np.zeros((in_h, in_w, 3), dtype=np.uint8)
        canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h))
        return canvas, scale

    def feed(self, canvas: np.ndarray) -> np.ndarray:
        """The session's input for one letterboxed canvas: the canvas itself (1 x H x W x 3 uint8) when the
        graph takes pixels, else the float blob (1 x 3 x H x W)."""
        return self.pixel_format.feed(canvas[None], self.takes_pixels)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in `image` (BGR), ordered by descending score."""
        canvas, scale = self.letterbox(image)
        outputs = self.session.run(self.output_names, {self.input_name: self.feed(canvas)})
        in_w, in_h = self.input_size
        scores_all, boxes_all, kps_all = [], [], []
        for idx, stride in enumerate(self.strides):
            scores = outputs[idx].reshape(-1)
            keep = np.nonzero(scores >= self.score_threshold)[0]
            if keep.size == 0:
                continue
            centers = self._anchor_centers(in_h // stride, in_w // stride, stride)[keep]
            boxes = outputs[idx + 3].reshape(-1, 4)[keep] * stride
            kps = outputs[idx + 6].reshape(-1, 10)[keep] * stride
            scores_all.append(scores[keep])
            boxes_all.append(_distance_to_boxes(centers, boxes))
            kps_all.append(_distance_to_kps(centers, kps))
        if not scores_all:
            return []
        scores = np.concatenate(scores_all)
        order = np.argsort(-scores, kind="stable")
        dets = np.hstack([np.concatenate(boxes_all) / scale, scores[:, None]]).astype(np.float32)[order]
        kpss = (np.concatenate(kps_all) / scale).astype(np.float32)[order]
        keep = nms(dets, self.nms_threshold)
        return [Face(bbox=dets[i, :4].copy(), score=float(dets[i, 4]), kps=kpss[i].copy()) for i in keep]
