"""Model kinds, one small module each, found through one table.

As insightface's model_zoo keeps one class per model, each kind here is a class in its own module,
registered in `KINDS` by the name a manifest gives in `kind`. Adding a swapper, enhancer or masker is
a new module and a line in this table; the loader and the fusion core do not change. `ROLES` says which
roles a model set has: the three it must have and the optional ones. A manifest may declare further
roles of a known kind (a second swapper, say); they serve their kind's category.

A kind name ending in `-standin` is a development stand-in with the same signatures as the real kind
(see devtools/standins.py): it loads through the same class.
"""

from __future__ import annotations

from dataclasses import dataclass

from .arcface import ArcFaceEmbedder
from .base import ModelKind
from .bisenet import FaceParser
from .blendswap import BlendSwap
from .codeformer import CodeFormerEnhancer
from .converter import EmbeddingConverter
from .enhancer import FaceEnhancer
from .gfpgan import GfpganEnhancer
from .ghost import Ghost
from .gpen import GpenEnhancer
from .hyperswap import HyperSwap
from .inswapper import InSwapper
from .restoreformer import RestoreFormerEnhancer
from .scrfd import ScrfdDetector
from .simswap import SimSwap
from .simswap_unofficial import SimSwapUnofficial
from .swapper import FaceSwapper
from .uniface import UniFace
from .xseg import FaceOccluder

KINDS: dict[str, type[ModelKind]] = {cls.kind: cls for cls in (ScrfdDetector, ArcFaceEmbedder, InSwapper, GfpganEnhancer,
                                                               FaceOccluder, FaceParser, EmbeddingConverter)}
KINDS.update({cls.kind: cls for cls in (HyperSwap, SimSwap, SimSwapUnofficial, Ghost, BlendSwap, UniFace)})  # swappers
KINDS.update({cls.kind: cls for cls in (CodeFormerEnhancer, GpenEnhancer, RestoreFormerEnhancer)})  # more enhancers
STANDIN_SUFFIX = "-standin"


@dataclass(frozen=True)
class Role:
    """A role of a model set: which category of kind fills it, whether a set must have it."""

    category: str
    required: bool
    default_kind: str


ROLES: dict[str, Role] = {
    "detector": Role("detector", True, "scrfd"),
    "recognizer": Role("recognizer", True, "arcface"),
    "swapper": Role("swapper", True, "inswapper"),
    "enhancer": Role("enhancer", False, "gfpgan"),
    "occluder": Role("occluder", False, "xseg"),
    "face_parser": Role("face_parser", False, "bisenet"),
    "embedding_converter": Role("embedding_converter", False, "crossface"),  # simswap's or ghost's, for `swapper`
}
REQUIRED_ROLES = tuple(name for name, role in ROLES.items() if role.required)


def kind_class(kind: str) -> type[ModelKind] | None:
    """The class of a manifest `kind`, or None when no module handles it."""
    return KINDS.get(kind.removesuffix(STANDIN_SUFFIX))


__all__ = ["KINDS", "REQUIRED_ROLES", "ROLES", "ArcFaceEmbedder", "EmbeddingConverter", "FaceEnhancer", "FaceOccluder",
           "FaceParser", "FaceSwapper", "InSwapper", "ModelKind", "Role", "ScrfdDetector", "kind_class"]
