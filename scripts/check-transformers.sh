#!/usr/bin/env bash
# Run the pseudo-token, tokenizer and backbone tests against another transformers release, in its own
# venv (.venv-transformers/), without touching .venv. Default: the newest 5.x on the package index.
#   bash scripts/check-transformers.sh                       # newest transformers<6
#   bash scripts/check-transformers.sh "transformers==5.0.0" # a given release
# Exit codes: 0 = tests passed; 1 = tests failed; 2 = could not install from the package index.
set -uo pipefail
cd "$(dirname "$0")/.."
SPEC=${1:-"transformers<6"}
VENV=.venv-transformers
PY=${PYTHON:-python3}
TESTS=(tests/test_pseudo_tokens.py tests/test_backbone.py tests/test_tokenizer.py)

fail_install() {
  echo "check-transformers: FAILED to install $1 from the package index (unreachable or no such release);" \
       "the transformers compatibility check did NOT run" >&2
  exit 2
}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV" || fail_install "a venv"
pip_install() {
  local out rc
  out=$("$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1); rc=$?
  [ -z "$out" ] || printf '%s\n' "$out" | grep -v "is ignored" >&2
  return $rc
}
# torch first, the same CPU wheel as scripts/setup.sh (pip's cache makes this a copy, not a download)
"$VENV/bin/python" -c "import torch" 2>/dev/null || pip_install "torch==2.13.0" || fail_install "torch==2.13.0"
pip_install --upgrade "$SPEC" tokenizers safetensors numpy pillow tqdm pyyaml regex pytest || fail_install "$SPEC"
pip_install --no-deps -e . || fail_install "zscir (editable)"
VERSION=$("$VENV/bin/python" -c "import transformers; print(transformers.__version__)") || fail_install "$SPEC"
echo "check-transformers: testing transformers $VERSION ($SPEC)"
HF_HUB_OFFLINE=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
status=$?
if [ $status -ne 0 ]; then
  echo "check-transformers: tests FAILED on transformers $VERSION" >&2
  exit 1
fi
BOUND=$(grep -o '"transformers[^"]*"' pyproject.toml | head -1)
echo "check-transformers: transformers $VERSION passes; pyproject.toml declares $BOUND"
