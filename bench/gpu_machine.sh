#!/bin/bash
# The GPU benches on a machine without network (the lent H100/H200), as one prepared run.
#
# Here, before: copy ../shared/gpu/ into the ignored .gpu/ folder with the wheels the function needs in
# .gpu/wheels/ (see ../shared/gpu/README.md), the files bench.gpu reads in .gpu/shared/ (images/obama.jpg,
# images/solvay_conference_1927.png, models/scrfd_2.5g_bnkps.onnx) for a machine without ../shared, and,
# for the nvImageCodec rows, `python -m bench.gpu_codec_kit .gpu/codec.tar.xz`. Then, there:
#   bash bench/gpu_machine.sh        (OUT=folder for the logs and JSON; STEPS="gpu detect" by default)
# The default steps take at most 480 + 60 s of timeouts (a device call may run 600 s): run it with
# timeout_s 590; bench.gpu writes its JSON after each config, so a run cut short keeps what it measured.
# A second, short run: STEPS="coldstart overlap codec gpucodec" (at most 120 + 90 + 135 + 100 s): the GPU's
# context made beside the imports against CUDA_EARLY_CONTEXT=off, sources beside the target, JPEG in
# strips, JPEG on the GPU in the server; STEPS=graphs (135 s) times CUDA graphs per model.
set -u
cd "$(dirname "$0")/.."
O=${OUT:-/tmp}
. .gpu/env.sh || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/wheels/*.whl 2>&1 | tail -2
if [ -f .gpu/codec.tar.xz ]; then  # nvImageCodec and nvJPEG, trimmed to what Python 3.12 needs
  mkdir -p /tmp/nvimg && tar -xJf .gpu/codec.tar.xz -C /tmp/nvimg
  export LD_LIBRARY_PATH="/tmp/nvimg/nvidia/cu13/lib:$LD_LIBRARY_PATH"
fi
export PYTHONPATH=$PWD:/tmp/site:/tmp/nvimg PYTHONUNBUFFERED=1 PATH=/tmp/site/bin:$PATH  # py-spy from the kit's wheels
[ -e ../shared ] || ln -s "$PWD/.gpu/shared" ../shared
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$O/machine.txt"
nproc | tee -a "$O/machine.txt"
python3 -c "import functions_framework, uvicorn, h11, cloudevents, onnxruntime as o; print('imports ok', o.__version__, o.get_available_providers())" || exit 1
WORK=/tmp/ff-bench-gpu
for step in ${STEPS:-gpu detect}; do
  echo "=== $step $(date +%T)"
  case $step in
    coldstart)  # process start to ready with the GPU's context made beside the imports (the default) against
                # CUDA_EARLY_CONTEXT=off (made by the first session, after them), in turns (ABBA)
      timeout 120 python3 -m bench.startup_ab --providers cuda --proxies --runs 4 --against CUDA_EARLY_CONTEXT=off 2>&1 | tee "$O/coldstart.log" ;;
    gpu)  # the issue's bench: the defaults, batching off (the baseline), CUDA graphs with JPEG on the GPU (the
          # shortest one-request latency), eight workers as knative/ serves, with each worker's native pools
          # sized to its share of the CPUs, with CUDA graphs
      timeout "${GPU_TIMEOUT:-480}" python3 -m bench.gpu --work $WORK --requests "${REQUESTS:-60}" \
        --configs "${CONFIGS:-defaults,unbatched,graphs+nvimgcodec,defaults@8,cpushare@8,graphs@8}" --images "${IMAGES:-1080p,4k,solvay}" \
        --concurrency "${LEVELS:-1,8,32}" --model-only "${MODEL_ONLY-fp32}" --gil-seconds "${GIL_SECONDS:-10}" \
        --json "$O/gpu.json" 2>&1 | tee "$O/gpu.log" ;;
    graphs)  # CUDA graphs (pipeline/cuda_graph.py): per model, replay against ordinary runs (on the H200 an
             # ordinary detector run took 168 ms there, so 3 x 40 calls per kind outlasted 40 s); then served,
             # CUDA_GRAPHS=all against the defaults, back to back
      timeout 60 python3 -m bench.cuda_graph --providers cuda --proxies --reps 10 --rounds 2 --work $WORK --json "$O/cuda_graph.json" 2>&1 | tee "$O/cuda_graph.log"
      timeout 75 python3 -m bench.gpu --work $WORK --requests "${REQUESTS:-80}" --images 1080p,solvay \
        --configs defaults,graphs --concurrency 1,8 --model-only "" --json "$O/graphs.json" 2>&1 | tee "$O/graphs.log" ;;
    detect)  # the detector's uint8 input (normalised in the graph) against the float blob, on CUDA
      timeout 60 python3 -m bench.detect_input --providers cuda --json "$O/detect.json" 2>&1 | tee "$O/detect.log" ;;
    codec)  # JPEG decode/encode: OpenCV against nvImageCodec (with overflow, queued, per thread), in-process
      timeout 90 python3 -m bench.codec --reps 20 --threads 8 --json "$O/codec.json" 2>&1 | tee "$O/codec.log"
      timeout 45 python3 -m bench.strip_decode --calls 30 --rounds 2 2>&1 | tee "$O/strip_decode.log" ;;
    gpucodec)  # the server with IMAGE_CODEC=nvimgcodec, overflowing to OpenCV (graphs prepared by the gpu step)
      timeout 100 python3 -m bench.gpu --work $WORK --requests "${REQUESTS:-80}" --images 1080p,4k \
        --configs nvimgcodec --model-only "" --json "$O/gpucodec.json" 2>&1 | tee "$O/gpucodec.log" ;;
    overlap)  # a new source made beside the target against in turn, in-process with the proxies, concurrency 1
      timeout 90 python3 -m bench.source_overlap --providers cuda --proxies --requests 40 2>&1 | tee "$O/overlap.log" ;;
    batching)  # frame and micro-batching in-process with the compute-realistic proxies
      timeout 180 python3 -m bench.batching --proxies --providers cuda --reps 9 --requests 96 2>&1 | tee "$O/batching.log" ;;
  esac
  echo "=== $step rc=${PIPESTATUS[0]} $(date +%T)"
done
