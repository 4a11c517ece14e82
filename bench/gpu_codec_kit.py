"""Build `.gpu/codec.tar.xz`: nvImageCodec trimmed to what Python 3.12 needs for JPEG, for the GPU machine.

    python -m bench.gpu_codec_kit [.gpu/codec.tar.xz]

The GPU machine has no network and everything must travel with the checkout (64 MiB in all, ../shared/gpu/
README.md), so the two wheels are downloaded here with `pip download` (the README's flags) and only this is
kept (about 20 MB unpacked, a few MB as xz):

- `nvidia/__init__.py` (the wheel's namespace shim) and `nvidia/nvimgcodec/*.py` (`__init__` only imports
  `nvimgcodec_impl`), `nvimgcodec_impl.cpython-312-x86_64-linux-gnu.so`, `libnvimgcodec.so.0`;
- `nvidia/nvimgcodec/extensions/libnvjpeg_ext*` (GPU JPEG, nvJPEG) and `libjpeg_turbo_ext*` (CPU JPEG);
  the OpenCV, TIFF, nvTIFF, JPEG 2000, BMP and PNM extensions, the other Pythons' modules, tools/ and
  include/ are left out;
- `nvidia/cu13/lib/libnvjpeg.so.13` from `nvidia-nvjpeg` 13.

How the trimmed tree is found, read from the wheel (readelf -d, strings, and a run with
PYNVIMGCODEC_VERBOSITY=5): libnvimgcodec loads every `.so` of the `extensions` folder next to itself at
import ("Loading extension module: .../nvidia/nvimgcodec/extensions/libnvjpeg_ext.so.0.9.0"; the
NVIMGCODEC_EXTENSIONS_PATH variable overrides the folder, not needed here), so the left-out extensions are
simply not registered. `libnvjpeg_ext` dlopens `libnvjpeg.so.13` and carries RUNPATH
`$ORIGIN/../../cu13/lib`, i.e. `nvidia/cu13/lib`, so the library is found next to it; LD_LIBRARY_PATH is
set as well for safety. None of the libraries needs libcudart (the CUDA runtime is linked statically;
libcuda.so.1 comes from the driver).
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

NVIMGCODEC = "nvidia-nvimgcodec-cu13==0.9.0.20"
NVJPEG = "nvidia-nvjpeg>=13,<14"
PIP_FLAGS = ["--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
             "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
             "--platform", "manylinux2014_x86_64"]
SITE = "/tmp/site"
UNPACK_LINES = (f"mkdir -p {SITE} && tar -xJf .gpu/codec.tar.xz -C {SITE}",
                f'export PYTHONPATH="{SITE}${{PYTHONPATH:+:$PYTHONPATH}}" '
                f'LD_LIBRARY_PATH="{SITE}/nvidia/cu13/lib${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"')


def wanted(name: str) -> bool:
    """Whether a wheel member belongs in the kit (Python 3.12, JPEG only)."""
    if name == "nvidia/__init__.py" or name == "nvidia/cu13/lib/libnvjpeg.so.13":
        return True
    if not name.startswith("nvidia/nvimgcodec/"):
        return False
    rest = name.removeprefix("nvidia/nvimgcodec/")
    if rest.startswith("extensions/"):
        ext = rest.removeprefix("extensions/")
        return ext.startswith(("libnvjpeg_ext", "libjpeg_turbo_ext"))
    if "/" in rest:  # tools/, include/, .libs/
        return False
    return rest.endswith(".py") or rest == "libnvimgcodec.so.0" or (
        rest.startswith("nvimgcodec_impl.cpython-312-") and rest.endswith(".so"))


def download(dest: Path) -> list[Path]:
    """The two wheels, fetched with pip for cp312 manylinux x86_64."""
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", *PIP_FLAGS, "-d", str(dest), NVIMGCODEC, NVJPEG],
                   check=True)
    wheels = sorted(dest.glob("*.whl"))
    names = " ".join(w.name for w in wheels)
    if "nvimgcodec" not in names or "nvjpeg" not in names:
        raise SystemExit(f"pip download gave {names!r}; expected the nvimgcodec and nvjpeg wheels")
    return wheels


def build(wheels: list[Path], out: Path) -> list[tuple[str, int]]:
    """Write the trimmed tree of `wheels` into the xz tarball `out`; returns (member, size) in order."""
    members: dict[str, bytes] = {}
    modes: dict[str, int] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if not info.is_dir() and wanted(info.filename):
                    members[info.filename] = zf.read(info)
                    modes[info.filename] = 0o755 if ".so" in info.filename else 0o644
    expected = {"nvidia/nvimgcodec/__init__.py", "nvidia/nvimgcodec/libnvimgcodec.so.0",
                "nvidia/cu13/lib/libnvjpeg.so.13"}
    missing = expected - members.keys()
    if missing or not any("nvimgcodec_impl.cpython-312" in m for m in members) \
            or not any("libnvjpeg_ext" in m for m in members):
        raise SystemExit(f"the wheels lack what the kit needs: {sorted(missing)} (got {sorted(members)})")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with tarfile.open(partial, "w:xz", preset=9) as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(members[name]), modes[name], 0
            tar.addfile(info, io.BytesIO(members[name]))
    partial.replace(out)
    return [(name, len(members[name])) for name in sorted(members)]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path(".gpu/codec.tar.xz"))
    parser.add_argument("--wheels", type=Path, default=None, help="use the wheels already in this folder")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="codec-kit-") as tmp:
        wheels = sorted(args.wheels.glob("*.whl")) if args.wheels else download(Path(tmp))
        listing = build(wheels, args.out)
    for name, size in listing:
        print(f"{size:>10}  {name}")
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.1f} MB ({sum(s for _, s in listing) / 1e6:.1f} MB unpacked)")
    print("On the GPU machine, from the project root:")
    for line in UNPACK_LINES:
        print("  " + line)
    return args.out


if __name__ == "__main__":
    main()
