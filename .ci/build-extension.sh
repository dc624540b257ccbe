#!/usr/bin/env bash
# Build the JupyterLab panel (production) into nbscale/labextension, where
# `pip install .` picks it up as data files. Needs node >= 20 + npm; installs
# jupyterlab into $PYTHON when missing (the builder compiles against Lab's
# shared packages).
#
#   .ci/build-extension.sh              lint + build (run before `pip install .`)
#   .ci/build-extension.sh --link       the same, then make an editable install
#                                       visible to Jupyter (editable wheels carry
#                                       no data files)
#   .ci/build-extension.sh --link-only  only that last step (after `pip install -e .`)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
mode=${1:-}

build() {
  "$PYTHON" -c "import jupyterlab" 2>/dev/null || "$PYTHON" -m pip install -q "jupyterlab>=4.1,<5"
  (
    cd extension
    if [ -f package-lock.json ]; then
      npm ci --no-audit --no-fund
    else
      npm install --no-audit --no-fund
    fi
    npm run lint
    npm run build:prod
    cp install.json ../nbscale/labextension/install.json
  )
}

link() {
  [ -f nbscale/labextension/package.json ] || { echo "build the extension first" >&2; exit 1; }
  local prefix target
  prefix=$("$PYTHON" -c 'import sys; print(sys.prefix)')
  mkdir -p "$prefix/share/jupyter/labextensions" "$prefix/etc/jupyter/jupyter_server_config.d"
  target="$prefix/share/jupyter/labextensions/nbscale"
  if [ -e "$target" ] && [ ! -L "$target" ]; then
    rm -rf "$target"  # a copy left by an earlier non-editable install
  fi
  ln -sfn "$PWD/nbscale/labextension" "$target"
  cp jupyter-config/server-config/nbscale.json "$prefix/etc/jupyter/jupyter_server_config.d/nbscale.json"
}

case "$mode" in
  "") build ;;
  --link) build; link ;;
  --link-only) link ;;
  *) echo "usage: $0 [--link|--link-only]" >&2; exit 2 ;;
esac
if [ "$mode" != "" ]; then
  "$PYTHON" -m jupyter labextension list 2>&1 | grep -q "nbscale.*enabled" \
    || { echo "nbscale labextension not enabled after linking" >&2; exit 1; }
fi
