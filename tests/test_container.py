"""The container image, built and run as Knative runs it: tests/container/run.sh.

Builds the CPU target of the Containerfile with podman on a Debian bookworm base made with mmdebstrap,
runs it as a non-root user with a read-only stand-in model volume, and checks /readyz, a multipart
fusion, storage events and SIGTERM drain against the running container. Outside CI (CI is not "true")
it skips when podman and mmdebstrap are neither installed nor installable, or ../shared is missing;
under CI it never skips. Deselect with `-m "not container"`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

import pytest

from .conftest import REPO, SCRFD

with warnings.catch_warnings():  # registered in tests/container/conftest.py, which a lone run of this file skips
    warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
    pytestmark = pytest.mark.container

IN_CI = os.environ.get("CI", "").lower() == "true"
TOOLS = ("podman", "mmdebstrap", "runc")


def _tools_available() -> bool:
    if all(shutil.which(t) for t in TOOLS):
        return True
    return os.geteuid() == 0 and shutil.which("apt-get") is not None  # run.sh installs them


@pytest.mark.timeout(900)
def test_container_image_builds_and_serves():
    if not IN_CI:
        if not _tools_available():
            pytest.skip(f"{', '.join(TOOLS)} are not installed and cannot be (needs root and apt-get)")
        if not SCRFD.is_file():
            pytest.skip(f"{SCRFD} is missing (../shared is not checked out)")
    env = {**os.environ, "PY": sys.executable, "SHARED": str(SCRFD.parents[1])}
    try:
        proc = subprocess.run(["bash", str(REPO / "tests" / "container" / "run.sh")], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=840)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode(errors="replace")
        pytest.fail(f"tests/container/run.sh did not finish in 840 s:\n{out[-8000:]}")
    print(proc.stdout)  # the timing table, with -s or -rP
    assert proc.returncode == 0, f"tests/container/run.sh exited with {proc.returncode}:\n{proc.stdout[-8000:]}"
