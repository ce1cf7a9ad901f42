#!/usr/bin/env bash
# One command for the comparison benchmark: sets up its own environment with the peer
# libraries (zennit 0.4.6, zennit-crp 0.6.0, captum) next to this checkout of lrp,
# then runs benchmarks/compare.py and writes benchmarks/RESULTS.md.
#   bash benchmarks/run.sh [compare.py options, e.g. --models vgg16 --batches 1]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${LRP_BENCH_VENV:-$here/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -e "$here/.." "zennit==0.4.6" "zennit-crp==0.6.0" captum
fi
exec "$venv/bin/python" "$here/compare.py" "$@"
