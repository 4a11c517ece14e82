#!/usr/bin/env bash
# Build the CPU image from the Containerfile and exercise it as Knative runs it: non-root, the model
# volume read-only at /models, a writable /cache, PORT from the environment. Checks /readyz, a multipart
# fusion, storage events (GCS CloudEvent, MinIO notification) and SIGTERM drain; prints image size and
# build time. Needs root (or podman and mmdebstrap already set up) and ../shared (the real SCRFD
# detector and photographs). Idempotent: the base image and the build layers are reused on a rerun.
#
# Without a container registry, the base is a Debian bookworm minbase made with mmdebstrap from the
# Debian mirror and imported into podman; users' builds keep the Containerfile's public default.
#
# Settings (environment): PY (the dev venv's python, default .venv/bin/python), SHARED (../shared),
# BASE_IMAGE (localhost/facefusion-base:bookworm), IMAGE (localhost/facefusion:ci-cpu),
# CACHE_DIR (/var/tmp/facefusion-ci), DEBIAN_MIRROR (http://deb.debian.org/debian),
# CA_BUNDLE (/etc/ssl/certs/ca-certificates.crt), KEEP=1 keeps the work folder.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
PY=${PY:-$REPO/.venv/bin/python}
SHARED=${SHARED:-$REPO/../shared}
BASE_IMAGE=${BASE_IMAGE:-localhost/facefusion-base:bookworm}
IMAGE=${IMAGE:-localhost/facefusion:ci-cpu}
CACHE_DIR=${CACHE_DIR:-/var/tmp/facefusion-ci}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY=${DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
BASE_PACKAGES=python3,python3-venv,python-is-python3,passwd,ca-certificates
NAME=facefusion-ci-$$
T0=$SECONDS

say() { printf '[run.sh %4ds] %s\n' $((SECONDS - T0)) "$*"; }
die() { say "ERROR: $*" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/facefusion-container.XXXXXX")
cleanup() {
  local rc=$?
  if podman container exists "$NAME" 2>/dev/null; then
    if [ "$rc" -ne 0 ]; then
      say "container log (last 60 lines):"
      podman logs --tail 60 "$NAME" 2>&1 | sed 's/^/    /' || true
    fi
    podman rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
  fi
  if [ "${KEEP:-0}" = 1 ]; then say "work folder kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'say "ERROR: line $LINENO: $BASH_COMMAND exited with $?" >&2' ERR
trap 'exit 130' INT TERM

# --- 1. tools -------------------------------------------------------------------------------------
[ -x "$PY" ] || die "no python at $PY: create the dev venv first (see README's test command) or set PY"
[ -f "$SHARED/models/scrfd_2.5g_bnkps.onnx" ] || die "$SHARED/models/scrfd_2.5g_bnkps.onnx is missing"
[ -d "$SHARED/images" ] || die "$SHARED/images is missing"
missing=()
for tool in podman mmdebstrap runc; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || die "missing ${missing[*]} and cannot install them (needs root and apt-get)"
  say "installing podman mmdebstrap runc (missing: ${missing[*]})"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman mmdebstrap runc >/dev/null
fi
# podman's defaults (crun or systemd cgroups, a raised nofile ulimit) fail in this sandbox: runc, cgroupfs
# and no default ulimits work. An existing containers.conf is the machine owner's and is left alone.
if [ "$(id -u)" = 0 ] && [ ! -e /etc/containers/containers.conf ]; then
  say "writing /etc/containers/containers.conf (runc, cgroupfs, no default ulimits)"
  mkdir -p /etc/containers
  cat > /etc/containers/containers.conf <<'EOF'
# written by facefusion-fn tests/container/run.sh
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
EOF
fi
mkdir -p "$CACHE_DIR"

# --- 2. base image --------------------------------------------------------------------------------
t=$SECONDS
# the image carries a key of what went into it: a changed package list or mirror makes a new one
base_key=$(printf '%s\n' "$BASE_PACKAGES" "$DEBIAN_MIRROR" "$DEBIAN_SECURITY" | sha256sum | cut -c1-12)
if [ "$(podman image inspect --format '{{index .Labels "facefusion.base-key"}}' "$BASE_IMAGE" 2>/dev/null)" = "$base_key" ]; then
  say "base image $BASE_IMAGE exists: reused"
else
  tarball=$CACHE_DIR/base-bookworm-$base_key.tar
  if [ ! -s "$tarball" ]; then
    say "making the bookworm base with mmdebstrap (minbase + $BASE_PACKAGES)"
    rm -f "$tarball.partial"
    # docs, man pages and translations are excluded (copyright files kept), as in Debian's slim images
    mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" --format=tar \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      bookworm "$tarball.partial" \
      "deb $DEBIAN_MIRROR bookworm main" "deb $DEBIAN_MIRROR bookworm-updates main" \
      "deb $DEBIAN_SECURITY bookworm-security main"
    mv "$tarball.partial" "$tarball"
    find "$CACHE_DIR" -maxdepth 1 -name 'base-bookworm-*.tar' ! -name "${tarball##*/}" -delete
  fi
  say "importing $tarball as $BASE_IMAGE"
  podman import --quiet --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
    --change "LABEL facefusion.base-key=$base_key" "$tarball" "$BASE_IMAGE" >/dev/null
fi
base_s=$((SECONDS - t))

# --- 3. pip configuration for the build: the host's index and CA bundle, mounted read-only --------
# The build reaches the same package index as the host (through --network host); pip inside trusts the
# host's CA bundle (a TLS-intercepting proxy's CA is in it here). Nothing of it stays in the image.
[ -s "$CA_BUNDLE" ] || CA_BUNDLE=$("$PY" -c 'import ssl; print(ssl.get_default_verify_paths().cafile or "")')
[ -s "$CA_BUNDLE" ] || die "no CA bundle found (set CA_BUNDLE)"
pipconf=$CACHE_DIR/pip.conf
# http(s) index settings only: the host's file:// indexes and find-links do not exist in the build
"$PY" -m pip config list 2>/dev/null | "$PY" -c '
import os, re, sys
keys = {"index-url", "extra-index-url", "trusted-host", "timeout", "default-timeout"}
conf = {}
for line in sys.stdin:
    m = re.match(r"^[^.]*\.([a-z-]+)=\x27(.*)\x27$", line.strip())
    if m and m.group(1) in keys:
        conf[m.group(1)] = m.group(2)
if os.environ.get("PIP_INDEX_URL"):
    conf["index-url"] = os.environ["PIP_INDEX_URL"]
print("[global]\ncert = /etc/ssl/certs/ca-certificates.crt")
for key, value in sorted(conf.items()):
    kept = " ".join(v for v in value.split() if not v.startswith("file:"))
    if kept:
        print(f"{key} = {kept}")
' > "$pipconf.new"
mv "$pipconf.new" "$pipconf"

# --- 4. build -------------------------------------------------------------------------------------
say "building $IMAGE (--target cpu, BASE_IMAGE=$BASE_IMAGE)"
previous=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
t=$SECONDS
podman build --network host --layers -f Containerfile --target cpu \
  --build-arg "BASE_IMAGE=$BASE_IMAGE" \
  --volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro" --volume "$pipconf:/etc/pip.conf:ro" \
  -t "$IMAGE" . > "$WORK/build.log" 2>&1 || { tail -n 80 "$WORK/build.log"; die "podman build failed"; }
build_s=$((SECONDS - t))
# the image this build replaced (untagged now) would pile up on a CI machine; its layers still in use stay
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$IMAGE")" ]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi
steps=$(grep -cE '^(\[[0-9]+/[0-9]+\] )?STEP ' "$WORK/build.log" || true)
cached=$(grep -c -- '--> Using cache' "$WORK/build.log" || true)
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "built in ${build_s} s ($cached of $steps steps from the layer cache), $((size / 1000000)) MB"

# the runtime image holds the service only: no development tools, tests or benchmarks, no build
# configuration from the host
podman run --rm --network none --entrypoint python "$IMAGE" -c '
import importlib.util, os, sys
bad = [m for m in ("devtools", "tests", "bench", "insightface", "pytest") if importlib.util.find_spec(m)]
bad += [p for p in ("/app/devtools", "/app/tests", "/app/bench") if os.path.exists(p)]
# buildah leaves the mount point of the build-time --volume pip.conf behind, empty (buildah#5847)
bad += [p for p in ("/etc/pip.conf",) if os.path.exists(p) and os.path.getsize(p)]
sys.exit(f"not for the runtime image: {bad}" if bad else 0)' || die "the image holds development files"
[ "$(podman image inspect --format '{{.Config.User}}' "$IMAGE")" = 10001 ] || die "the image's USER is not 10001"
# the service's modules are compiled in the image, and their bytecode matches their sources (a start
# that cannot write /app would otherwise compile them all again)
podman run --rm --network none --entrypoint python "$IMAGE" -c '
import importlib.util, pathlib, sys
missing = []
for source in (p for d in ("function", "pipeline", "warmup") for p in pathlib.Path("/app", d).rglob("*.py")):
    cached = pathlib.Path(importlib.util.cache_from_source(str(source)))
    head = cached.read_bytes()[:16] if cached.is_file() else b""
    if head[:4] != importlib.util.MAGIC_NUMBER or head[8:16] != importlib.util.source_hash(source.read_bytes()):
        missing.append(str(source))
sys.exit(f"not compiled in the image, or stale: {missing[:5]} ({len(missing)})" if missing else 0)' \
  || die "the image does not hold its modules' bytecode"

# --- 5. stand-in model set (real SCRFD detector) and storage folders ------------------------------
models=$WORK/models
detector=$SHARED/models/scrfd_2.5g_bnkps.onnx
if "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("devtools") is None)' 2>/dev/null; then
  maker=devtools
else
  maker=pipeline  # before the stand-in builder moved to devtools/
fi
say "stand-in model set: python -m $maker make-test-models (real SCRFD detector)"
"$PY" -m "$maker" make-test-models "$models" --detector "$detector" > "$WORK/models.log" 2>&1 || { cat "$WORK/models.log"; die "make-test-models failed"; }
mkdir -p "$WORK/data/in" "$WORK/data/out" "$WORK/cache"
chmod 0755 "$WORK" "$WORK/data" "$WORK/data/in"
chmod 0777 "$WORK/data/out" "$WORK/cache"  # written by uid 10001, like an emptyDir

# --- 6. run as knative/service.yaml does and check ------------------------------------------------
port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
t=$SECONDS
podman run -d --name "$NAME" --network host \
  --user 10001 --cap-drop ALL --security-opt no-new-privileges \
  -v "$models:/models:ro" -v "$WORK/cache:/cache:rw" -v "$WORK/data:/data:rw" \
  -e PORT="$port" -e K_REVISION=facefusion-ci-00001 \
  -e INPUT_URI_TEMPLATE='file:///data/in/{name}' -e OUTPUT_URI='file:///data/out/{stem}.jpg' \
  -e SOURCE_FACE_URI=file:///data/in/source.jpg -e ALLOWED_URI_PREFIXES=file:///data/ \
  "$IMAGE" >/dev/null
say "started $NAME on port $port (uid 10001, /models read-only)"
"$PY" tests/container/checks.py --url "http://127.0.0.1:$port" --container "$NAME" \
  --data "$WORK/data" --images "$SHARED/images" || die "container checks failed"
checks_s=$((SECONDS - t))
podman logs "$NAME" > "$WORK/container.log" 2>&1 || true
if grep -qE '"status": ?500[,}]|Traceback' "$WORK/container.log"; then
  sed 's/^/    /' "$WORK/container.log" | tail -n 60
  die "the container logged a 500 or a traceback"
fi

# --- 7. summary -----------------------------------------------------------------------------------
printf '\n| %-34s | %-36s |\n|%s|%s|\n' "what" "value" "------------------------------------" "--------------------------------------"
printf '| %-34s | %-36s |\n' \
  "image" "$IMAGE" \
  "image size" "$((size / 1000000)) MB ($size bytes)" \
  "base image" "$BASE_IMAGE" \
  "base image (mmdebstrap + import)" "${base_s} s" \
  "podman build --target cpu" "${build_s} s" \
  "run + checks" "${checks_s} s" \
  "total" "$((SECONDS - T0)) s"
echo
say "all container checks passed"
