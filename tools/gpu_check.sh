#!/usr/bin/env bash
# The GPU check (issue 30), for the few minutes a GPU is at hand: make the CUDA build of torch the
# one in .venv (as the README says), run the unit tests and the smoke notebooks on CUDA, then the quick
# 00 and 06, and file their timings as the GPU rows of reports/gpu/<profile>/ (the runner's timings,
# each with its machine and the GPU named in its note). Every stage is timed into $OUT/gpu_check.json.
#
#   tools/gpu_check.sh                     # every stage: env setup unit smoke quick
#   STAGES="env unit" tools/gpu_check.sh   # some of them
#   GPU_CHECK_DRY=1 tools/gpu_check.sh     # print what each stage would run, run nothing
#
# Settings (environment): OUT (default reports/gpu/check: logs and gpu_check.json), TORCH_INDEX (the
# CUDA wheel index, default PyTorch's cu130), TORCH_WHEELS (a folder of wheels instead, no network),
# UNIT_TESTS (pytest arguments of the unit stage, default every test but the notebooks), QUICK (the
# quick notebooks, default "00_baseline 06_zeroshot"), STAGE_TIMEOUT (seconds per stage, default 3600),
# GPU_CHECK_ALLOW_CPU=1 (run without a GPU: how CI tests this script; the CUDA install is skipped).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-$ROOT/reports/gpu/check}
STAGES=${STAGES:-env setup unit smoke quick}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cu130}
UNIT_TESTS=${UNIT_TESTS:-'-m "not notebook"'}
QUICK=${QUICK:-00_baseline 06_zeroshot}
STAGE_TIMEOUT=${STAGE_TIMEOUT:-3600}
PY=$ROOT/.venv/bin/python
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export LLGBM_REPORTS=${LLGBM_REPORTS:-$ROOT/reports/gpu}    # GPU timings never mix with the CPU report's
mkdir -p "$OUT"

known="env setup unit smoke quick"
for s in $STAGES; do
  case " $known " in *" $s "*) ;; *) echo "gpu_check: unknown stage '$s'; the stages are: $known" >&2; exit 2;; esac
done

cuda_ready() { "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
gpu_name() { command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader | head -1 || echo "no GPU"; }

stage_cmd() {   # the command of one stage, as one line of shell
  case $1 in
    env)   echo "\"$PY\" -c 'import torch, platform; print(\"python\", platform.python_version(), \"torch\", torch.__version__, \"cuda\", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"\")'" ;;
    setup) if [ "${GPU_CHECK_ALLOW_CPU:-0}" = 1 ]; then echo "make setup"
           elif [ -n "${TORCH_WHEELS:-}" ]; then echo "(test -x \"$PY\" || python3 -m venv .venv) && \"$PY\" -m pip install -q --no-index --find-links \"$TORCH_WHEELS\" torch==2.13.0 && make setup"
           else echo "(test -x \"$PY\" || python3 -m venv .venv) && \"$PY\" -m pip install -q torch==2.13.0 --index-url \"$TORCH_INDEX\" && make setup"; fi ;;
    unit)  echo "\"$PY\" -m pytest -q -x $UNIT_TESTS" ;;
    smoke) echo "\"$PY\" -m llgbm.run --profile smoke --note \"GPU check on $(gpu_name)\"" ;;
    quick) echo "\"$PY\" -m llgbm.run --profile quick --only $QUICK --note \"GPU check on $(gpu_name)\"" ;;
  esac
}

results=()
status=0
for s in $STAGES; do
  cmd=$(stage_cmd "$s")
  if [ "${GPU_CHECK_DRY:-0}" = 1 ]; then echo "$s: $cmd"; continue; fi
  if [ "$s" != env ] && [ "$s" != setup ] && [ "${GPU_CHECK_ALLOW_CPU:-0}" != 1 ] && ! cuda_ready; then
    echo "gpu_check: torch in .venv sees no GPU, so stage '$s' would run on the CPU; run the setup stage first," \
         "or set GPU_CHECK_ALLOW_CPU=1 to test this script on a CPU" >&2
    status=3; break
  fi
  echo "[gpu_check] $s: $cmd"
  t0=$(date +%s%N)
  timeout "$STAGE_TIMEOUT" bash -c "$cmd" > >(tee "$OUT/$s.log") 2>&1
  rc=$?
  secs=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
  results+=("{\"stage\": \"$s\", \"rc\": $rc, \"seconds\": $secs}")
  echo "[gpu_check] $s: rc $rc in ${secs%.*} s"
  if [ $rc -ne 0 ]; then status=$rc; break; fi
done
if [ "${GPU_CHECK_DRY:-0}" != 1 ]; then
  (IFS=,; printf '{"gpu": "%s", "stages": [%s]}\n' "$(gpu_name)" "${results[*]}") > "$OUT/gpu_check.json"
  echo "[gpu_check] $OUT/gpu_check.json"
fi
exit $status
