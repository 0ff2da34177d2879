#!/usr/bin/env bash
# One prepared GPU check (scripts/gpu_check.py): on one H100/H200 it runs in under 8 minutes and
# writes $OUT/gpu_check.json (default runs/gpu_check.json) and prints a table.
#   scripts/gpu_check.sh            # the GPU run
#   scripts/gpu_check.sh --smoke    # the same sections on CPU with tiny sizes (CI)
# Its portable_predict section times each bundle's StableHLO predict beside the Python network.
# Extra flags go to `python scripts/gpu_check.py` (--budget_s, --sections=a,b, --out=...).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export OUT="${OUT:-runs}"
mkdir -p "$OUT"
exec "$PYTHON" scripts/gpu_check.py "$@"
