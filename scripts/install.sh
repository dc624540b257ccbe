#!/usr/bin/env bash
# Set up nbscale on a fresh machine (Debian/Ubuntu with Python >= 3.11, run as root or with sudo).
#   bash scripts/install.sh         the engine, the magics and the JupyterLab extension
#   bash scripts/install.sh test    the same plus what the test suite needs (chromium, node tooling)
set -euo pipefail
cd "$(dirname "$0")/.."
want_tests=${1:-}
PY=${PYTHON:-python3}
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

if [ "$want_tests" = test ]; then
  # a real browser for the panel's UI tests; node + npm build the labextension;
  # iproute2 joins the Kubeflow contract test's nodes over veth pairs in network namespaces
  apt_install chromium iproute2 jq
  # tests/support/venvs.py makes test-only venvs (kserve's SDK) with "$PY" -m venv
  "$PY" -c "import ensurepip" 2>/dev/null || apt_install python3-venv
fi
command -v npm >/dev/null 2>&1 || apt_install nodejs npm

echo "== torch (CPU build first, so nothing pulls a multi-GB CUDA build)"
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q torch==2.13.0

extras=".[examples,serving]"
[ "$want_tests" = test ] && extras=".[examples,serving,test]"
echo "== nbscale ($extras; setup.py's build hook builds the JupyterLab panel with npm)"
"$PY" -m pip install -q -e "$extras"
# editable wheels carry no data files: point Jupyter at the built panel and server config
PYTHON="$PY" bash .ci/build-extension.sh --link-only
if [ "$want_tests" = test ]; then
  echo "== panel lint (eslint + prettier)"
  PYTHON="$PY" bash .ci/build-extension.sh --lint
fi
echo "== ready: $(command -v nbscale)"
