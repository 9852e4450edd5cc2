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
#   bench/gpu_session.sh bench ARGS...     # THERE: bench/run.py ARGS, its JSON lines into $OUT
#   bench/gpu_session.sh tune ARGS...      # THERE: bench/tune_kernels.py ARGS
#   bench/gpu_session.sh profile ARGS...   # THERE: bench/profile_decode.py ARGS
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
  if compgen -G "$WHEELS/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
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
    "$PYTHON" -m pytest -q -ra -p no:cacheprovider tests/gpu "$@" 2>&1 | tee "$OUT/check.log"
    ;;
  bench)
    prepare
    "$PYTHON" bench/run.py --results-dir "$OUT" "$@" 2>&1 | tee -a "$OUT/bench.log"
    ;;
  tune)
    prepare
    "$PYTHON" bench/tune_kernels.py --results "$OUT/tune.jsonl" "$@" 2>&1 | tee -a "$OUT/tune.log"
    ;;
  profile)
    prepare
    "$PYTHON" bench/profile_decode.py --out "$OUT" "$@" 2>&1 | tee -a "$OUT/profile.log"
    ;;
  *) echo "unknown step: $step (wheels, check, bench, tune, profile)" >&2; exit 2 ;;
esac
