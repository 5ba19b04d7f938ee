#!/usr/bin/env bash
# Create .venv and install zscir with every extra. torch is pinned here (CPU wheel) before the
# package so that pip never pulls the multi-GB CUDA build; on a GPU machine install the torch
# build you want first and run `pip install -e '.[dev]'` yourself.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import torch, transformers, zscir; print('zscir ready: torch', torch.__version__, 'transformers', transformers.__version__)"
