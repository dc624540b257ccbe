#!/usr/bin/env bash
# The GPU half of bench_train_magic.py, as run on a lent GPU machine (no network there).
# Fallbacks in benchmarks/.venvs/gpu-deps (carried, git-ignored): cloudpickle, psutil,
# tomli_w and nbscale's entry points, used only when the machine lacks them.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp}
echo "== machine"; nvidia-smi -L; which python; python -V
python - <<'PY'
import importlib
for name in ("torch", "cloudpickle", "psutil", "tomli_w", "jupyter_client", "ipykernel", "papermill", "setuptools"):
    try:
        mod = importlib.import_module(name)
        print(name, getattr(mod, "__version__", "?"))
    except Exception as exc:
        print(name, "MISSING", type(exc).__name__)
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.device_count())
PY
DEPS=$(pwd)/benchmarks/.venvs/gpu-deps
if pip install -e . --no-deps --no-build-isolation -q >"$OUT/pip.log" 2>&1; then
  echo "editable install ok"
else
  echo "editable install failed (see pip.log); using PYTHONPATH"
fi
for mod in cloudpickle psutil tomli_w; do
  python -c "import $mod" 2>/dev/null || { echo "fallback for $mod"; export PYTHONPATH="${PYTHONPATH:-}:$DEPS"; }
done
python -c "import importlib.metadata as m, sys; sys.exit(0 if m.entry_points(group='nbscale.backends') else 1)" \
  || { echo "fallback entry points"; export PYTHONPATH="${PYTHONPATH:-}:$DEPS"; }
export PYTHONPATH="$(pwd):${PYTHONPATH:-}"
MODE=""
python -c "import jupyter_client, ipykernel, nbscale.magics" 2>/dev/null || { MODE="--no-kernel"; echo "no Jupyter here: engine driver"; }
export BENCH_STEPS=${BENCH_STEPS:-3000}
cd benchmarks && timeout "${BENCH_TIMEOUT:-400}" python bench_train_magic.py --gpu --rounds "${ROUNDS:-3}" --async-rounds 3 $MODE
rc=$?
cp results/train_magic_gpu.json "$OUT/" 2>/dev/null
exit $rc
