#!/bin/bash
# The GPU bench on a machine without network (the lent H100/H200): copy ../shared/gpu/ into an ignored
# .gpu/ folder with the wheels the function needs in .gpu/wheels/ and, for a machine without ../shared,
# the files bench.gpu reads in .gpu/shared/ (see ../shared/gpu/README.md); then run this script there.
set -u
cd "$(dirname "$0")/.."
. .gpu/env.sh || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/wheels/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
[ -e ../shared ] || ln -s "$PWD/.gpu/shared" ../shared
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import functions_framework, uvicorn, h11, cloudevents, onnxruntime as o; print('imports ok', o.__version__, o.get_available_providers())" || exit 1
timeout "${BENCH_TIMEOUT:-420}" python3 -m bench.gpu --requests "${REQUESTS:-120}" --concurrency 1,8,32 2>&1 | tee "${OUT:-/tmp}/bench-gpu.log"
echo "bench rc=${PIPESTATUS[0]}"
# optional: frame and micro-batching in-process with the compute-realistic proxies (about a minute more)
if [ "${BATCHING_BENCH:-0}" = 1 ]; then
  timeout 180 python3 -m bench.batching --proxies --providers cuda --reps 9 --requests 96 2>&1 | tee "${OUT:-/tmp}/bench-batching.log"
fi
