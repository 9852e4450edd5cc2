#!/usr/bin/env bash
# The GPU session's steps, for a machine like the lent H100 (docs/benchmarks.md, "Running it on the lent GPU").
#
# That machine's image has its own python3 with torch 2.11, Triton 3.6 and transformers 5.17, no
# internet and none of our server's packages. `make bench` would build a virtualenv there and try to
# install; this script instead runs the bench scripts with the image's python, adding only the wheels
# that `wheels` fetched here beforehand (transformers >= 5.21: see pyproject.toml).
#
#   bench/gpu_session.sh wheels            # HERE, with internet: the wheels into .whl/ (git-ignored)
#   bench/gpu_session.sh check             # THERE: versions, then tests/gpu with the kernels compiled
#   bench/gpu_session.sh bench ARGS...     # THERE: python -m bench.run ARGS, its JSON lines into $OUT
#   bench/gpu_session.sh tune ARGS...      # THERE: python -m bench.tune_kernels ARGS
#   bench/gpu_session.sh profile ARGS...   # THERE: python -m bench.profile_decode ARGS
#   bench/gpu_session.sh loop ARGS...      # THERE: python -m bench.engine_loop ARGS (thread against worker)
#   bench/gpu_session.sh session SECONDS [PLAN]  # THERE: a plan's steps (bench, decode, owed, tiles, h200, loop), each capped
#   bench/gpu_session.sh summary           # THERE: the short table of $OUT's figures and the steps' exits
#   DRY_RUN=1 bench/gpu_session.sh session 900 h200   # HERE: the h200 plan rehearsed on the CPU (tiny sizes)
#
# Several steps chain in one device call (a fresh machine costs minutes):
#   bench/gpu_session.sh check && bench/gpu_session.sh bench --models 26b --dtypes bf16
# Each step's output is also written to $OUT/<step>.log; $OUT defaults to bench/results.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$REPO/bench/results}
SITE=${SITE:-/tmp/gemma4-site}
WHEELS=$REPO/.whl
TRANSFORMERS_VERSION=${TRANSFORMERS_VERSION:-5.24.0}

step=${1:-}
[ -n "$step" ] || { sed -n '2,20p' "$0"; exit 2; }
shift

fetch_wheels() {
  grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  mkdir -p "$WHEELS"
  # the image's python is 3.12 on x86-64; transformers is pure Python, its needs are all in the image
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" "transformers==$TRANSFORMERS_VERSION"
  ls -l "$WHEELS"
}

prepare() {
  # carried wheels first on the path; the repo's packages (the builder lives in build/) after them
  # (once per machine: a session's later steps find them installed)
  if compgen -G "$WHEELS/*.whl" > /dev/null && [ ! -f "$SITE/.installed" ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
    touch "$SITE/.installed"
  fi
  export PYTHONPATH="$SITE:$REPO:$REPO/build${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONUNBUFFERED=1
  mkdir -p "$OUT"
  "$PYTHON" - <<'EOF'
import torch, transformers, triton
from packaging.version import Version
print(f"python torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}, "
      f"transformers {transformers.__version__}, device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
if Version(transformers.__version__) < Version("5.21"):
    raise SystemExit("transformers < 5.21: run `bench/gpu_session.sh wheels` here first and carry .whl")
EOF
}

case "$step" in
  wheels) fetch_wheels ;;
  check)
    prepare
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
    workers=()
    "$PYTHON" -c "import xdist" 2>/dev/null && workers=(-n 12)  # the kernels' compiles run in parallel
    "$PYTHON" -m pytest -q -ra -p no:cacheprovider "${workers[@]}" tests/gpu "$@" 2>&1 | tee "$OUT/check.log"
    ;;
  bench)
    prepare
    "$PYTHON" -m bench.run --results-dir "$OUT" "$@" 2>&1 | tee -a "$OUT/bench.log"
    ;;
  tune)
    prepare
    "$PYTHON" -m bench.tune_kernels --results "$OUT/tune.jsonl" "$@" 2>&1 | tee -a "$OUT/tune.log"
    ;;
  profile)
    prepare
    "$PYTHON" -m bench.profile_decode --out "$OUT" "$@" 2>&1 | tee -a "$OUT/profile.log"
    ;;
  loop)
    prepare
    "$PYTHON" -m bench.engine_loop --out "$OUT/engine_loop.jsonl" "$@" 2>&1 | tee -a "$OUT/loop.log"
    ;;
  truedims)
    # correctness at the true dimensions against transformers (tests/gpu/test_true_dimensions.py)
    prepare
    "$PYTHON" -m pytest -q -ra -s -p no:cacheprovider tests/gpu/test_true_dimensions.py "$@" 2>&1 | tee "$OUT/truedims.log"
    ;;
  summary)
    prepare > /dev/null
    "$PYTHON" -m bench.session_summary "$OUT" 2>&1 | tee "$OUT/summary.log"
    ;;
  session)
    # One device call for a short lease: each step runs in its own process under a cap (a hang or a
    # crash costs that step, not the call), in the order of need. Figures are written as they are
    # measured, so a step cut off keeps what it measured. SIGINT first, so Python unwinds and flushes.
    #   bench:  make bench's figures (both models' batch-1 targets first), a profile, the kernels' check
    #   decode: the one-row kernels against what they replace (per layer, at the real shapes, outputs
    #           compared), whole batch-1 decode steps with and without them, their check, the other
    #           batch-1 targets
    #   owed:   what the 2026-11-25 lease left: the 31B in bf16 beside transformers, then the one-row
    #           kernels' and W8A16's tiles (docs/benchmarks.md, "What is next")
    #   tiles:  transformers at the 31B (cut off in `owed`), then the tiles `owed` chose and the MoE side
    #           stream: their check, whole decode steps, and W8A16's new tiles at the 26B-A4B's shapes
    #   h200:   issue 19: correctness at the true dimensions (logits, 32 greedy steps, FP8 against bf16),
    #           the kernels' check, then make bench re-anchored on the H200 (its copy rate measured first,
    #           the floors from it), the short table last. DRY_RUN=1: the same steps on the CPU at tiny
    #           sizes (the true-dimension test at the tiny geometry, bench --dry-run), to know it runs
    #   loop:   issue 22's open question: the engine loop in a worker process (--engine-process) against
    #           one on a thread of the server's process, at the true dimensions, batch 1 first (the pipe's
    #           cost per step is largest there), then under load. DRY_RUN=1: the tiny engine on the CPU
    budget=${1:-540}
    plan=${2:-bench}
    deadline=$((SECONDS + budget))
    capped() {
      local cap=$1 left; shift
      left=$((deadline - SECONDS - 15))
      [ "$left" -lt "$cap" ] && cap=$left
      if [ "$cap" -lt 30 ]; then echo "== skip $*: ${cap}s left" | tee -a "$OUT/session.log"; return 0; fi
      echo "== $* (at most ${cap}s, started at ${SECONDS}s)" | tee -a "$OUT/session.log"
      local rc=0
      timeout --signal=INT --kill-after=15 "$cap" "$0" "$@" || rc=$?
      echo "== $*: exit $rc after ${SECONDS}s" | tee -a "$OUT/session.log"
    }
    mkdir -p "$OUT"
    case "$plan" in
      bench)
        capped 200 bench --models 26b --dtypes bf16  # and transformers at the same dimensions
        capped 140 bench --models 26b --dtypes fp8 --transformers off
        capped 150 bench --models 31b --dtypes fp8 --transformers off
        capped 90 profile --model 26b --batch 1
        capped 110 check
        ;;
      decode)
        capped 55 tune --kernels gemv-switch,expert-gemv-switch --models 26b,31b
        capped 45 profile --model 26b --dtype fp8 --trace off
        capped 35 profile --model 26b --dtype fp8 --gemv off --trace off
        capped 50 check -k "gemv or one_row or routed or greedy"
        capped 35 profile --model 26b --dtype bf16 --trace off
        capped 45 profile --model 31b --dtype fp8 --trace off
        ;;
      owed)
        capped 240 bench --models 31b --dtypes bf16  # and transformers at the 31B's dimensions
        capped 150 tune --kernels gemv,expert-gemv --models 26b
        capped 150 tune --kernels w8a16 --models 31b
        capped 45 profile --model 26b --dtype fp8 --trace off
        ;;
      tiles)  # what the 2026-11-26 owed run left, then its tiles and the MoE side stream, checked and timed
        capped 90 bench --models 31b --dtypes bf16 --ours off  # transformers at the 31B's dimensions
        capped 75 check -k "w8a16 or gemv or one_row or fp8 or side_stream or graphs or taught or greedy"
        capped 40 profile --model 26b --dtype fp8 --trace off
        capped 40 profile --model 26b --dtype fp8 --trace off --moe-side-stream on
        capped 50 profile --model 31b --dtype fp8 --trace off
        capped 35 profile --model 26b --dtype bf16 --trace off --moe-side-stream on
        capped 35 profile --model 26b --dtype bf16 --trace off
        capped 60 tune --kernels w8a16 --models 26b --shapes M=16,M=64
        ;;
      h200)
        if [ "${DRY_RUN:-0}" = 1 ]; then
          export GEMMA_TRUE_DIMS_DRY_RUN=1
          capped 400 truedims
          capped 300 bench --dry-run --dtypes bf16
        else
          capped 240 truedims
          capped 90 check -k "not true_dimensions"
          capped 130 bench --models 26b --dtypes bf16,fp8 --transformers off
          capped 100 bench --models 31b --dtypes fp8 --transformers off
        fi
        "$0" summary
        ;;
      loop)
        if [ "${DRY_RUN:-0}" = 1 ]; then
          capped 120 loop --random tiny --concurrency 1,4 --tokens 8 --repeat 1
        else
          # FP8: the shortest steps (the pipe's share is largest), and two copies fit the card at once
          capped 200 loop --random 26b --dtype fp8 --device cuda --concurrency 1,32,128
          capped 150 loop --random 31b --dtype fp8 --device cuda --concurrency 1,32
        fi
        ;;
      *) echo "unknown plan: $plan (bench, decode, owed, tiles, h200, loop)" | tee -a "$OUT/session.log" >&2; exit 2 ;;
    esac
    ;;
  *) echo "unknown step: $step (wheels, check, bench, tune, profile, loop, truedims, summary, session)" >&2; exit 2 ;;
esac
