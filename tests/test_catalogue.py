"""`python -m warmup prefetch NAME...`: the catalogue of public model files, pinned and explicit hashes,
licences, from a local file:// mirror (no network)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from devtools.enhancer_standins import enhancer_standin
from devtools.standins import arcface_model, inswapper_model, occluder_model, parser_model
from pipeline import FuseOptions, Settings, load_fuser, sha256_file
from pipeline.models import KINDS
from pipeline.models.enhancer import EnhancerOptions
from warmup.catalogue import CATALOGUE, GITHUB, HUGGING_FACE, CatalogueEntry, CatalogueError, plan
from warmup.prefetch import Progress, prefetch

from .conftest import REPO, shared_file

ISSUE_NAMES = ["inswapper_128", "inswapper_128_fp16", "hyperswap_1a_256", "hyperswap_1b_256", "hyperswap_1c_256",
               "simswap_256", "simswap_unofficial_512", "ghost_1_256", "ghost_2_256", "ghost_3_256",
               "arcface_converter_ghost", "arcface_converter_simswap", "blendswap_256", "uniface_256", "gfpgan_1.2",
               "gfpgan_1.3", "gfpgan_1.4", "codeformer", "gpen_bfr_256", "gpen_bfr_512", "gpen_bfr_1024",
               "gpen_bfr_2048", "restoreformer_plus_plus", "xseg_1", "xseg_2", "bisenet_resnet_18",
               "bisenet_resnet_34", "det_10g", "w600k_r50"]
# kinds the swapper family adds (helper "swappers"); every other kind must be one this version loads
def test_the_catalogue_knows_every_kind_of_the_issue():
    assert set(ISSUE_NAMES) <= set(CATALOGUE)
    for entry in CATALOGUE.values():
        assert entry.kind in KINDS, entry  # every catalogued file is served by a registered kind
        assert entry.licence and entry.file.endswith(".onnx")
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
        if entry.archive is None and entry.name not in ("inswapper_128",):  # the default set's own locations
            release = entry.urls[0].split("/download/")[1].split("/")[0]
            assert list(entry.urls) == [GITHUB.format(release=release, file=entry.file),
                                        HUGGING_FACE.format(release=release, file=entry.file)]
    roles = {name: CATALOGUE[name].role for name in ("hyperswap_1a_256", "arcface_converter_ghost", "gpen_bfr_512",
                                                     "xseg_2", "bisenet_resnet_18", "det_10g", "w600k_r50")}
    assert roles == {"hyperswap_1a_256": "swapper", "arcface_converter_ghost": "embedding_converter",
                     "gpen_bfr_512": "enhancer", "xseg_2": "occluder", "bisenet_resnet_18": "face_parser",
                     "det_10g": "detector", "w600k_r50": "recognizer"}
    non_commercial = [name for name, e in CATALOGUE.items() if "non-commercial" in e.licence.lower()]
    assert {"inswapper_128", "codeformer", "gpen_bfr_512", "simswap_256", "blendswap_256"} <= set(non_commercial)


def test_a_plan_fills_roles_adds_what_a_name_needs_and_refuses_unpinned_files():
    hexes = {name: f"{i:064x}" for i, name in enumerate(CATALOGUE)}
    planned = plan(["hyperswap_1a_256", "xseg_1", "bisenet_resnet_34", "gfpgan_1.4", "codeformer"], version="v2")
    models = planned.manifest["models"]
    assert planned.manifest["version"] == "v2"
    assert {role: spec["file"] for role, spec in models.items()} == {
        "detector": "det_10g.onnx", "recognizer": "w600k_r50.onnx", "swapper": "hyperswap_1a_256.onnx",
        "occluder": "xseg_1.onnx", "face_parser": "bisenet_resnet_34.onnx", "enhancer": "gfpgan_1.4.onnx",
        "codeformer": "codeformer.onnx"}
    assert models["enhancer"]["sha256"] == CATALOGUE["gfpgan_1.4"].sha256 and models["enhancer"]["size"] == 340299087
    assert models["detector"]["archive"]["member"] == "det_10g.onnx"
    assert all("licence: " in line for line in planned.lines)
    ghost = plan(["ghost_2_256"], {"ghost_2_256": hexes["ghost_2_256"],
                                   "arcface_converter_ghost": hexes["arcface_converter_ghost"]}).manifest["models"]
    assert ghost["embedding_converter"]["file"] == "arcface_converter_ghost.onnx"  # added: the swapper needs it
    with pytest.raises(CatalogueError, match=r"no SHA-256 is pinned for ghost_1_256, arcface_converter_ghost .*"
                                             r"--sha256 ghost_1_256=HEX --sha256 arcface_converter_ghost=HEX"):
        plan(["ghost_1_256"])
    with pytest.raises(CatalogueError, match="unknown model name gfpgan_9"):
        plan(["gfpgan_9"])


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, scrfd_path) -> Path:
    """A local folder holding stand-ins under the catalogue's file names, as a mirror of the public files."""
    root = tmp_path_factory.mktemp("mirror")
    (root / "det_10g.onnx").write_bytes(scrfd_path.read_bytes())
    onnx.save(arcface_model(), str(root / "w600k_r50.onnx"))
    onnx.save(inswapper_model(), str(root / "inswapper_128.onnx"))
    onnx.save(enhancer_standin("gfpgan"), str(root / "gfpgan_1.2.onnx"))
    onnx.save(enhancer_standin("codeformer"), str(root / "codeformer.onnx"))
    onnx.save(enhancer_standin("gpen", 256), str(root / "gpen_bfr_256.onnx"))
    onnx.save(occluder_model(), str(root / "xseg_1.onnx"))
    onnx.save(parser_model(), str(root / "bisenet_resnet_18.onnx"))
    return root


def _quiet() -> Progress:
    return Progress(stream=None)


def test_prefetch_by_name_with_pinned_hashes_serves(mirror, tmp_path):
    """A catalogue whose pins are the mirror's files: no --sha256 needed, and the set loads and fuses."""
    pinned = {name: CatalogueEntry(name=name, kind=e.kind, role=e.role, file=e.file, urls=e.urls, licence=e.licence,
                                   input_size=e.input_size, sha256=sha256_file(mirror / e.file))
              for name, e in CATALOGUE.items() if (mirror / e.file).is_file()}
    planned = plan(["gpen_bfr_256", "xseg_1", "codeformer"], mirror=f"file://{mirror}", version="v3", catalogue=pinned)
    result = prefetch(planned.manifest, tmp_path / "models", make_current=True, progress=_quiet())
    assert sorted(result.copied) == ["codeformer.onnx", "det_10g.onnx", "gpen_bfr_256.onnx", "inswapper_128.onnx",
                                     "w600k_r50.onnx", "xseg_1.onnx"]
    fuser = load_fuser(Settings(model_path=tmp_path / "models", cache_path=tmp_path / "cache"))
    source = fuser.decode(shared_file("images", "obama.jpg").read_bytes())
    target = fuser.decode(shared_file("images", "biden.jpg").read_bytes())
    options = FuseOptions(enhance=True, enhancement=EnhancerOptions(role="codeformer", weight=0.3))
    assert fuser.fuse(source, target, options).report.faces_swapped == 1
    assert fuser.models.role("enhancer").input_size == 256  # gpen_bfr_256 took the enhancer role


def _prefetch_cli(args: list[str], model_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MODEL_PATH"}
    return subprocess.run([sys.executable, "-m", "warmup", "prefetch", *args, "--model-path", str(model_path)],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=120)


def test_prefetch_cli_by_name_with_explicit_hashes_prints_licences(mirror, tmp_path):
    names = ["gfpgan_1.2", "bisenet_resnet_18"]
    files = {"gfpgan_1.2": "gfpgan_1.2.onnx", "bisenet_resnet_18": "bisenet_resnet_18.onnx",
             "det_10g": "det_10g.onnx", "w600k_r50": "w600k_r50.onnx", "inswapper_128": "inswapper_128.onnx"}
    given = [arg for name, file in files.items() for arg in ("--sha256", f"{name}={sha256_file(mirror / file)}")]
    proc = _prefetch_cli([*names, "--mirror", f"file://{mirror}", "--version", "v2", *given], tmp_path / "models")
    assert proc.returncode == 0, proc.stderr
    assert "gfpgan_1.2: role enhancer, kind gfpgan, licence: Apache-2.0; verified by the given sha256" in proc.stderr
    assert "bisenet_resnet_18: role face_parser, kind bisenet, licence: MIT" in proc.stderr
    assert "inswapper_128: role swapper, kind inswapper, licence: non-commercial" in proc.stderr
    assert "instead of the pinned one" in proc.stderr  # the mirror's inswapper is not the pinned file
    installed = (tmp_path / "models" / "v2")
    assert sorted(p.name for p in installed.iterdir() if not p.name.startswith(".")) == sorted(
        [*files.values(), "manifest.json"])


def test_prefetch_cli_refuses_a_name_without_a_hash_and_a_wrong_hash(mirror, tmp_path):
    refused = _prefetch_cli(["gfpgan_1.2", "--mirror", f"file://{mirror}"], tmp_path / "models")
    assert refused.returncode == 1
    assert "no SHA-256 is pinned for gfpgan_1.2" in refused.stderr and "--sha256 gfpgan_1.2=HEX" in refused.stderr
    assert not (tmp_path / "models").exists()
    wrong = _prefetch_cli(["gfpgan_1.2", "--mirror", f"file://{mirror}", "--sha256", f"gfpgan_1.2={'0' * 64}"],
                          tmp_path / "models")
    assert wrong.returncode == 1 and "does not match" in wrong.stderr
    assert not list((tmp_path / "models").rglob("gfpgan_1.2.onnx"))
    assert not list((tmp_path / "models").rglob("manifest.json"))
    for args, needle in ((["gfpgan_9"], "gfpgan_9"), (["gfpgan_1.4", "--sha256", "gfpgan_1.4=xyz"], "--sha256 takes"),
                         (["gfpgan_1.4", "--sha256", f"nope={'0' * 64}"], "--sha256 names nope"),
                         (["nosuchmodel"], "neither a catalogue name"),
                         (["gfpgan_1.4", "--sha256", f"simswap_256={'0' * 64}"], "which this set does not fetch")):
        bad = _prefetch_cli(args, tmp_path / "other")
        assert bad.returncode == 1 and needle in bad.stderr, (args, bad.stderr)


def test_the_readme_lists_every_catalogue_licence():
    readme = (REPO / "README.md").read_text()
    for name, entry in CATALOGUE.items():
        rows = [line for line in readme.splitlines() if line.startswith(f"| `{name}` | `{entry.kind}` |")]
        assert len(rows) == 1 and entry.licence in rows[0], name
