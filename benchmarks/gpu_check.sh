#!/usr/bin/env bash
# The GPU check, prepared for the lent GPU machine (one H200, Python 3.12 with torch and
# transformers, no network, no lm-eval or MLflow). About 3-4 minutes there; keep the run's
# timeout_s at 480 (8 minutes) so that a rerun still fits in the session's device time.
#
# 1. Here, once (needs PyPI):            bash benchmarks/gpu_wheels.sh      -> .whl/ (~16 MiB)
# 2. Here, without a GPU (checks logic):  bash benchmarks/gpu_check.sh --cpu-dry-run
# 3. On the GPU machine, through the device tool, with carry [".whl"] and timeout_s 480:
#        set -o pipefail; bash benchmarks/gpu_check.sh 2>&1 | tee $OUT/gpu_check.log
#
# On the GPU machine it installs .whl/*.whl with --no-index --no-deps into /tmp/site (on
# PYTHONPATH: the plugin's pytest11 entry point is found there), then runs
# benchmarks/gpu_check.py: the example evaluation (examples/: piqa_local, 300 PIQA questions,
# batch size 8) on CUDA through the plugin (--modelreg-device cuda) and through plain
# lm_eval.simple_evaluate, 3 interleaved runs each; prints the ratio plugin / plain (goal
# <= 1.02) and the CUDA memory freed when the plugin's runner switches from one model to
# another. With --cpu-dry-run it skips the install, uses this machine's .venv and runs the same
# steps on the CPU with 40 docs, plus a check that everything the processes imported is on the
# GPU machine or in .whl/. Other arguments go to gpu_check.py run (--reps R, --limit N).
set -euo pipefail
cd "$(dirname "$0")/.."

install_wheels() {  # the device README's install line: PYTHON TARGET [WHEELS...]
    local python=$1 target=$2
    shift 2
    (( $# )) || set -- .whl/*.whl
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$target" "$@"
}

if [[ "${1:-}" == "--cpu-dry-run" ]]; then
    PY=${PYTHON:-.venv/bin/python}
    [[ -d .whl ]] || { echo ".whl/ is missing: run bash benchmarks/gpu_wheels.sh first" >&2; exit 1; }
    py312=""  # the install step, with the machine's Python version, where one is here
    for candidate in "${PY312:-}" python3.12 "$(compgen -G '/root/.pyenv/versions/3.12*/bin/python3.12' | head -1)"; do
        if [[ -n "$candidate" ]] && "$candidate" -c "" 2>/dev/null; then py312=$candidate; break; fi
    done
    if [[ -n "$py312" ]]; then
        site=$(mktemp -d)
        install_wheels "$py312" "$site"
        PYTHONPATH=$site "$py312" -c "import importlib.metadata as m; \
assert 'pytest_modelreg.plugin' in [e.value for e in m.entry_points(group='pytest11')]; \
print('python3.12: the wheels install, the plugin entry point is found')"
        install_wheels "$py312" "$site" .whl/alt/*.whl  # the fallback's install line
        rm -rf "$site"
    fi
    "$PY" benchmarks/gpu_check.py requirements .whl || true
else
    PY=python3
    [[ -d .whl ]] || { echo ".whl/ did not travel: name it in carry" >&2; exit 1; }
    start=$(date +%s)
    install_wheels "$PY" /tmp/site
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    echo "installed $(ls .whl/*.whl | wc -l) wheels in $(( $(date +%s) - start )) s"
    if ! "$PY" benchmarks/gpu_check.py requirements .whl && compgen -G ".whl/alt/*.whl" >/dev/null; then
        echo "installing the alternative wheels: $(cd .whl/alt && ls ./*.whl)"
        install_wheels "$PY" /tmp/site .whl/alt/*.whl
        "$PY" benchmarks/gpu_check.py requirements .whl || echo "WARNING: going on regardless"
    fi
    "$PY" -c "import lm_eval, datasets, evaluate, gguf, pytest_modelreg.plugin, xdist; \
print('lm-eval', lm_eval.__version__)"
    nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_check.py run "$@"
