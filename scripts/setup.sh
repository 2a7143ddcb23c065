#!/usr/bin/env bash
# Set up nestdsl on a fresh machine: graphviz (for `nestdsl viz`), a virtualenv in .venv with
# the CPU build of torch, and the package with its test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v dot >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq graphviz >/dev/null
  else
    echo "setup: install graphviz (the \`dot\` program) for \`nestdsl viz\`" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
# Torch first, pinned to the CPU build: an open range would pull a multi-GB CUDA build.
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/pip install -q "torch==${NESTDSL_TORCH:-2.13.0}"
fi
.venv/bin/pip install -q -e ".[dev]"
echo "setup: ready (.venv/bin/nestdsl, .venv/bin/python -m pytest -n auto)"
