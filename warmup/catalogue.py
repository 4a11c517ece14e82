"""The public model files by name: `python -m warmup prefetch hyperswap_1a_256 xseg_1 gfpgan_1.4 --version v2`.

Each catalogue name says the file's kind and role in a model set, its public download locations, input
size, licence and, where it could be established, its size and SHA-256.

Where the facts come from:

- names, file names, download locations, templates and sizes: FaceFusion's model sets
  (facefusion/processors/modules/face_swapper/core.py, face_enhancer/core.py, facefusion/face_masker.py,
  3.x): every file is published as `https://github.com/facefusion/facefusion-assets/releases/download/
  <release>/<file>` and mirrored at `https://huggingface.co/facefusion/<release>/resolve/main/<file>`
  (facefusion/choices.py, `download_provider_set`); the embedding converters are the models-3.0.0
  `arcface_converter_*` files FaceFusion 3.0 used;
- licences: FaceFusion's `__metadata__` of each model (`license`) where it has one; for the maskers the
  upstream projects (XSeg: DeepFaceLab, GPL-3.0; BiSeNet: face-parsing.PyTorch, MIT), for buffalo_l
  insightface's model terms (non-commercial research), for the converters none is published;
- SHA-256 and size: pinned only where at least two independent public projects that pin the same file
  agree (catalogues of face-swap tools, several quoting the Hugging Face LFS digests); FaceFusion itself
  publishes CRC32 `.hash` files only. The others need an explicit `--sha256 NAME=HEX`: prefetch refuses
  them without one rather than install an unverified file.

The default set's three files (det_10g and w600k_r50 from insightface's buffalo_l.zip, inswapper_128)
are the ones `prefetch default` pins (warmup/default_set.py). Every kind named here is registered in
pipeline/models (the converters are kind `crossface`, serving the `embedding_converter` role).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .default_set import DEFAULT_SET

GITHUB = "https://github.com/facefusion/facefusion-assets/releases/download/{release}/{file}"
HUGGING_FACE = "https://huggingface.co/facefusion/{release}/resolve/main/{file}"
HEX64 = re.compile(r"[0-9a-f]{64}")

NON_COMMERCIAL = "non-commercial"
LICENCE_INSIGHTFACE = "insightface models: non-commercial research only"
LICENCE_GPEN = "non-commercial (GPEN)"
LICENCE_CODEFORMER = "S-Lab License 1.0 (non-commercial)"
LICENCE_SIMSWAP = "non-commercial (SimSwap)"
LICENCE_BLENDSWAP = "non-commercial (BlendSwap)"
LICENCE_HYPERSWAP = "ResearchRAIL (FaceFusion; research use)"
LICENCE_UNKNOWN = "unknown (none published)"


@dataclass(frozen=True)
class CatalogueEntry:
    """One public model file: what it is in a model set and where it comes from."""

    name: str
    kind: str
    role: str
    file: str
    urls: tuple[str, ...]
    licence: str
    input_size: tuple[int, int] | None = None
    sha256: str | None = None  # pinned: agreed by more than one public source
    size: int | None = None
    archive: Mapping[str, Any] | None = None  # a member of a pinned archive (buffalo_l.zip)
    needs: tuple[str, ...] = ()  # other catalogue files this one needs in the same set (a converter)

    def spec(self, sha256: str, mirror: str | None) -> dict[str, Any]:
        """Its manifest entry with the download locations prefetch reads (a mirror replaces them)."""
        spec: dict[str, Any] = {"file": self.file, "sha256": sha256, "kind": self.kind}
        if self.input_size is not None:
            spec["input_size"] = list(self.input_size)
        if self.size is not None and sha256 == self.sha256:
            spec["size"] = self.size
        if mirror is not None:
            spec["urls"] = [f"{mirror.rstrip('/')}/{self.file}"]
        elif self.archive is not None:
            spec["archive"] = dict(self.archive)
        else:
            spec["urls"] = list(self.urls)
        return spec


def _facefusion(release: str, file: str) -> tuple[str, ...]:
    return (GITHUB.format(release=release, file=file), HUGGING_FACE.format(release=release, file=file))


def _entry(name: str, kind: str, role: str, release: str, size: int | None, licence: str,
           sha256: str | None = None, nbytes: int | None = None, needs: tuple[str, ...] = ()) -> CatalogueEntry:
    file = f"{name}.onnx"
    return CatalogueEntry(name=name, kind=kind, role=role, file=file, urls=_facefusion(release, file), licence=licence,
                          input_size=(size, size) if size else None, sha256=sha256, size=nbytes, needs=needs)


def _default(role: str, name: str, licence: str) -> CatalogueEntry:
    spec = DEFAULT_SET["models"][role]
    return CatalogueEntry(name=name, kind=spec["kind"], role=role, file=spec["file"], urls=tuple(spec.get("urls", ())),
                          licence=licence, input_size=tuple(spec["input_size"]), sha256=spec["sha256"],
                          size=spec.get("size"), archive=spec.get("archive"))


_ENTRIES: tuple[CatalogueEntry, ...] = (
    # detector and recognizer the pipeline uses (insightface buffalo_l), and the default swapper
    _default("detector", "det_10g", LICENCE_INSIGHTFACE),
    _default("recognizer", "w600k_r50", LICENCE_INSIGHTFACE),
    _default("swapper", "inswapper_128", f"{NON_COMMERCIAL} (insightface)"),
    # swappers (FaceFusion face_swapper: type, template and size per model)
    _entry("inswapper_128_fp16", "inswapper", "swapper", "models-3.0.0", 128, f"{NON_COMMERCIAL} (insightface)",
           "c4eccca86ad177586c85c28bf1a64a9d9ed237e283a15818d831f7facfd3f420", 277680829),
    _entry("hyperswap_1a_256", "hyperswap", "swapper", "models-3.3.0", 256, LICENCE_HYPERSWAP,
           "c0e98a8a03a238f461ed3d2570e426b49f46745ee400854a60dceeb70c246add", 402742682),
    _entry("hyperswap_1b_256", "hyperswap", "swapper", "models-3.3.0", 256, LICENCE_HYPERSWAP,
           "5124031789c42f71b9558fb71954ef7aedb6da7ed9fac79293e23c61a792a73e", 402742682),
    _entry("hyperswap_1c_256", "hyperswap", "swapper", "models-3.3.0", 256, LICENCE_HYPERSWAP,
           "5528c2d76fe9986c99d829278987ef9f3a630cb606db7628d02b57b330f406a5", 402742682),
    _entry("simswap_256", "simswap", "swapper", "models-3.0.0", 256, LICENCE_SIMSWAP,
           needs=("arcface_converter_simswap",)),
    _entry("simswap_unofficial_512", "simswap_unofficial", "swapper", "models-3.0.0", 512, LICENCE_SIMSWAP,
           needs=("arcface_converter_simswap",)),
    _entry("ghost_1_256", "ghost", "swapper", "models-3.0.0", 256, "Apache-2.0", needs=("arcface_converter_ghost",)),
    _entry("ghost_2_256", "ghost", "swapper", "models-3.0.0", 256, "Apache-2.0", needs=("arcface_converter_ghost",)),
    _entry("ghost_3_256", "ghost", "swapper", "models-3.0.0", 256, "Apache-2.0", needs=("arcface_converter_ghost",)),
    _entry("blendswap_256", "blendswap", "swapper", "models-3.0.0", 256, LICENCE_BLENDSWAP),
    _entry("uniface_256", "uniface", "swapper", "models-3.0.0", 256, LICENCE_UNKNOWN),
    # the embedding converters (ArcFace embedding -> the swapper's identity space); their input is a vector
    _entry("arcface_converter_ghost", "crossface", "embedding_converter", "models-3.0.0", None,
           LICENCE_UNKNOWN),
    _entry("arcface_converter_simswap", "crossface", "embedding_converter", "models-3.0.0", None,
           LICENCE_UNKNOWN),
    # enhancers (FaceFusion face_enhancer)
    _entry("gfpgan_1.2", "gfpgan", "enhancer", "models-3.0.0", 512, "Apache-2.0"),
    _entry("gfpgan_1.3", "gfpgan", "enhancer", "models-3.0.0", 512, "Apache-2.0"),
    _entry("gfpgan_1.4", "gfpgan", "enhancer", "models-3.0.0", 512, "Apache-2.0",
           "accc4757b26bdb89b32b4d3500d4f79c9dff97c1dd7c7104bf9dcb95e3311385", 340299087),
    _entry("codeformer", "codeformer", "enhancer", "models-3.0.0", 512, LICENCE_CODEFORMER,
           "21710e7ab61c82683576c428e9c1b6fe1ed419586b7b39e394c3449c294b550f"),
    _entry("gpen_bfr_256", "gpen", "enhancer", "models-3.0.0", 256, LICENCE_GPEN,
           "bad8bf0426873828df2dbf4e3b3d9ababba9da7965b8b72426569486f7ae5c25", 75792988),
    _entry("gpen_bfr_512", "gpen", "enhancer", "models-3.0.0", 512, LICENCE_GPEN,
           "d5f066b9068a8b74217f9712e28e875a6144629b108a6f7355acbdb3a2832c54", 284340240),
    _entry("gpen_bfr_1024", "gpen", "enhancer", "models-3.0.0", 1024, LICENCE_GPEN,
           "bcd31aa52110a2005efc96abbab4546d57e42482648f08715b552423d96b381b"),
    _entry("gpen_bfr_2048", "gpen", "enhancer", "models-3.0.0", 2048, LICENCE_GPEN),
    _entry("restoreformer_plus_plus", "restoreformer++", "enhancer", "models-3.0.0", 512, "Apache-2.0"),
    # maskers (FaceFusion face_masker)
    _entry("xseg_1", "xseg", "occluder", "models-3.1.0", 256, "GPL-3.0 (DeepFaceLab XSeg)",
           "c4d1498b8a03b5fe2a3a5d2ef2a0402ab03bd51edaf5b2d8d5fb764702a97dd3", 70324286),
    _entry("xseg_2", "xseg", "occluder", "models-3.1.0", 256, "GPL-3.0 (DeepFaceLab XSeg)",
           "cd9a0879eaf43841d765472cf1f8c330dbf9dcb03da0eace93e95f3bcc399042"),
    _entry("bisenet_resnet_18", "bisenet", "face_parser", "models-3.1.0", 512, "MIT (face-parsing.PyTorch)"),
    _entry("bisenet_resnet_34", "bisenet", "face_parser", "models-3.0.0", 512, "MIT (face-parsing.PyTorch)",
           "4a0b8c958a3c938913bd06a8365dbb3c8761afba6ecbf0d14b3b1f77eb230c96", 93632546),
)
CATALOGUE: dict[str, CatalogueEntry] = {entry.name: entry for entry in _ENTRIES}
# a set needs these roles; when the names given fill none of them, the pipeline's own files are added
IMPLIED = {"detector": "det_10g", "recognizer": "w600k_r50", "swapper": "inswapper_128"}


class CatalogueError(Exception):
    """A request the catalogue cannot turn into a model set; the message says which name and why."""


@dataclass
class CataloguePlan:
    """The manifest to prefetch and, per model, the line prefetch prints about it."""

    manifest: dict[str, Any]
    lines: list[str] = field(default_factory=list)


def parse_hashes(pairs: Iterable[str]) -> dict[str, str]:
    """`--sha256 NAME=HEX` values as a map; CatalogueError for a malformed one."""
    hashes: dict[str, str] = {}
    for pair in pairs:
        name, sep, digest = pair.partition("=")
        digest = digest.strip().lower()
        if not sep or not name or not HEX64.fullmatch(digest):
            raise CatalogueError(f"--sha256 takes NAME=HEX with 64 hex digits, got {pair!r}")
        hashes[name.strip()] = digest
    return hashes


def is_catalogue_request(sources: list[str], catalogue: Mapping[str, CatalogueEntry] = CATALOGUE) -> bool:
    """Names rather than a URI or `default`: every source is a catalogue name."""
    return all(source in catalogue for source in sources)


def plan(names: list[str], hashes: Mapping[str, str] | None = None, mirror: str | None = None,
         version: str | None = None, catalogue: Mapping[str, CatalogueEntry] = CATALOGUE) -> CataloguePlan:
    """The model set of these names: roles filled in order (the first of a role takes the role's name,
    later ones their own name, so a request picks them with `swapper=` / `enhancer=`), what a name
    needs added, the detector, recognizer and swapper added when none is named."""
    hashes = dict(hashes or {})
    unknown = [name for name in names if name not in catalogue]
    if unknown:
        raise CatalogueError(f"unknown model name{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                             f"the catalogue has {', '.join(catalogue)}")
    stray = sorted(set(hashes) - set(catalogue))
    if stray:
        raise CatalogueError(f"--sha256 names {', '.join(stray)}, which the catalogue does not have")
    wanted = list(dict.fromkeys(names))
    for name in list(wanted):
        wanted += [need for need in catalogue[name].needs if need not in wanted]
    roles_named = {catalogue[name].role for name in wanted}
    wanted = [IMPLIED[role] for role in IMPLIED if role not in roles_named and IMPLIED[role] in catalogue] + wanted
    unused = sorted(set(hashes) - set(wanted))
    if unused:  # a hash for a file not fetched is a typo or a forgotten name: never silently ignored
        raise CatalogueError(f"--sha256 names {', '.join(unused)}, which this set does not fetch "
                             f"(it fetches {', '.join(wanted)}). Nothing was copied")
    unpinned = [name for name in wanted if catalogue[name].sha256 is None and name not in hashes]
    if unpinned:
        raise CatalogueError(
            f"no SHA-256 is pinned for {', '.join(unpinned)} (no two public sources agree on one); give it "
            f"explicitly: {' '.join(f'--sha256 {name}=HEX' for name in unpinned)}. Nothing was copied")
    models: dict[str, dict[str, Any]] = {}
    lines = []
    for name in wanted:
        entry = catalogue[name]
        role = entry.role if entry.role not in models else name
        digest = hashes.get(name, entry.sha256)
        assert digest is not None
        models[role] = entry.spec(digest, mirror)
        how = "pinned sha256" if digest == entry.sha256 else (
            "the given sha256, instead of the pinned one" if entry.sha256 else "the given sha256")
        lines.append(f"{name}: role {role}, kind {entry.kind}, licence: {entry.licence}; verified by {how}")
    manifest = {"name": " + ".join(wanted), "version": version or "catalogue", "models": models}
    return CataloguePlan(manifest=manifest, lines=lines)
