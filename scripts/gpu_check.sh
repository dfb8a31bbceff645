#!/usr/bin/env bash
# The GPU check (issue #10): full-size data, training, prediction and embedding on CUDA.
#
#   bash scripts/gpu_check.sh                    # on the GPU machine: under 8 minutes
#   GPU_CHECK_CPU=1 bash scripts/gpu_check.sh    # tiny sizes on a CPU (same code paths)
#   bash scripts/gpu_check.sh --dry-run          # the same as GPU_CHECK_CPU=1
#
# Made for a machine without network: it uses the python and torch already installed there
# (never our .venv), imports the package from src/ (PYTHONPATH, nothing installed), and
# installs a missing dependency only from wheels in .whl/ (pip --no-deps --no-index).
# Results: printed, and written to $OUT/gpu_check.json when $OUT is set (after each stage).
# The body is scripts/gpu_check.py; the stage budgets are in its docstring.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1   # random weights only: never reach the hub
TOTAL_LIMIT_S="${GPU_CHECK_LIMIT_S:-480}"
# the stage budgets count from here and end 30 s before the timeout below (gpu_check.Budget)
export GPU_CHECK_START="$(date +%s.%N)" GPU_CHECK_LIMIT_S="$TOTAL_LIMIT_S"

echo "python: $PY ($("$PY" --version 2>&1))"

# import name -> distribution name, for the run-time dependencies (requirements.txt)
missing=$("$PY" - <<'EOF'
import importlib.util
deps = {"torch": "torch", "transformers": "transformers", "numpy": "numpy",
        "pandas": "pandas", "pyarrow": "pyarrow", "sklearn": "scikit-learn",
        "yaml": "pyyaml", "PIL": "pillow", "tqdm": "tqdm", "matplotlib": "matplotlib"}
print(" ".join(d for m, d in deps.items() if importlib.util.find_spec(m) is None))
EOF
)
if [[ -n "$missing" ]]; then
    if [[ -d .whl ]]; then
        echo "installing missing dependencies from .whl/ (no network, --no-deps): $missing"
        # shellcheck disable=SC2086
        "$PY" -m pip install --no-deps --no-index --find-links .whl $missing \
            || echo "warning: could not install all of: $missing"
    else
        echo "warning: missing dependencies ($missing) and no .whl/ folder to install them from"
    fi
fi

"$PY" - <<'EOF'
import torch
n = torch.cuda.device_count() if torch.cuda.is_available() else 0
names = [torch.cuda.get_device_name(i) for i in range(n)]
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {n} GPU(s): {names}")
EOF

args=("$@")
if [[ "${GPU_CHECK_CPU:-0}" != "0" ]]; then
    args+=(--dry-run)
fi
if [[ " ${args[*]} " == *" --dry-run "* ]]; then
    # a shared CPU: sleeping OpenMP threads, not spinning ones, when cores are busy
    export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
fi
exec timeout --signal=TERM --kill-after=10 "$TOTAL_LIMIT_S" "$PY" scripts/gpu_check.py "${args[@]}"
