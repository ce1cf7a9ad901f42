#!/usr/bin/env bash
# One command per comparison benchmark.  Sets up its own environment with the peer
# libraries next to this checkout of lrp (lrp itself never imports them), then runs
# one script of benchmarks/ in it:
#   bash benchmarks/run.sh                      # compare.py: writes benchmarks/RESULTS.md
#   bash benchmarks/run.sh compare.py --models vgg16 --batches 1
#   bash benchmarks/run.sh SCRIPT.py [options]  # any other comparison script
# LRP_BENCH_VENV=DIR uses (or creates) the environment in DIR instead of benchmarks/.venv.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${LRP_BENCH_VENV:-$here/.venv}"
peers=(
    "zennit==0.4.6"
    "zennit-crp==0.6.0"
    "captum>=0.7"
    "scikit-learn>=1.0"  # lime_shap_compare.py: scikit-learn's digits
)
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q -e "$here/.." "${peers[@]}"
script="compare.py"
if [ $# -gt 0 ] && [[ "$1" == *.py ]]; then
    script="$1"
    shift
fi
exec "$venv/bin/python" "$here/$script" "$@"
