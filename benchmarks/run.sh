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
    "quantus==0.6.0"
    "lxt==2.1"
    "scikit-learn>=1.0"  # lime_shap_compare.py: scikit-learn's digits
)
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q -e "$here/.." "${peers[@]}"
# LXT 2.1 imports modules that transformers 5 removed and its ViT recipe needs zennit
# >= 0.5 (compare.py pins 0.4.6): its own copies, put first on PYTHONPATH only by the
# scripts that run LXT (lxt_compare.py, transformer_speed.py; see lxt_side.py).
lxt_deps="$venv/lxt-deps"
if [ ! -d "$lxt_deps/transformers" ]; then
    "$venv/bin/pip" install -q --no-deps --target "$lxt_deps" "transformers==4.52.4" \
        "tokenizers>=0.21,<0.22" "huggingface-hub>=0.30,<1.0" "zennit==0.5.1" \
        requests urllib3 charset-normalizer certifi idna
fi
script="compare.py"
if [ $# -gt 0 ] && [[ "$1" == *.py ]]; then
    script="$1"
    shift
fi
exec "$venv/bin/python" "$here/$script" "$@"
