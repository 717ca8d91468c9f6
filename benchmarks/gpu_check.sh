#!/usr/bin/env bash
# The benchmark on a GPU machine (H100/H200 class), as one prepared run of under 8 minutes:
#   benchmarks/gpu_check.sh OUTPUT_FOLDER [more options of python -m benchmarks]
# Installs nothing beyond what `make venv` installs (a no-op where the environment is up to date), checks
# that a CUDA device is visible, then runs the benchmark on a standard 600-slice study with the lesion model
# on cuda (mirroring on), the slice scaling at 200 and 400 slices and a one-study settings table, and
# leaves benchmark.md and benchmark.json in OUTPUT_FOLDER (studies and logs in OUTPUT_FOLDER/work).
# BENCH_CORES (default 2) pins each measured process to that many CPU cores, as on the CPU targets;
# BENCH_TIMEOUT_S (default 420) bounds the benchmark itself; BENCH_WORKDIR (default OUTPUT_FOLDER/work)
# holds the generated studies (about 600 MB). On a machine that cannot install from a package index (an
# air-gapped GPU server), BENCH_PYTHON names an interpreter whose environment already holds the runtime
# requirements (requirements.txt; the stock path's SDK is then optional: pass --skip-stock without it),
# and `make venv` is skipped. Exit status 3: no GPU visible.
set -euo pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: benchmarks/gpu_check.sh OUTPUT_FOLDER [options of python -m benchmarks]" >&2
  exit 2
fi
out=$(realpath -m "$1")
shift
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  echo "error: no NVIDIA GPU visible (nvidia-smi missing or lists none); this check needs one" >&2
  exit 3
fi
nvidia-smi -L

if [[ -n "${BENCH_PYTHON:-}" ]]; then
  python=$BENCH_PYTHON
else
  make --no-print-directory venv
  python=.venv/bin/python
  # holoscan-cu13 loads libcudart.so.13 from the nvidia-cuda-runtime wheel (see the Makefile).
  LD_LIBRARY_PATH="$(pwd)/.venv/lib/python3.11/site-packages/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LD_LIBRARY_PATH
fi
if ! "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: a GPU is installed but torch cannot use it (driver too old for torch's CUDA build?)" >&2
  exit 3
fi
ulimit -s 32768 2>/dev/null || true

mkdir -p "$out"
timeout --signal=INT "${BENCH_TIMEOUT_S:-420}" "$python" -m benchmarks \
  --device cuda --mirroring on --cores "${BENCH_CORES:-2}" --slices 200,400 --settings-seeds 2000 \
  --workdir "${BENCH_WORKDIR:-$out/work}" --out "$out" "$@"
echo "GPU benchmark report: $out/benchmark.md"
