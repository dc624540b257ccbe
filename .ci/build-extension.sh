#!/usr/bin/env bash
# The JupyterLab panel by hand. `pip install .`, `pip install -e .` and
# `python -m build` build it themselves (setup.py's hatch-jupyter-builder hook
# runs npm into nbscale/labextension); this script is for the steps around them.
# Needs node >= 20 + npm; installs jupyterlab into $PYTHON when missing (the
# builder compiles against Lab's shared packages).
#
#   .ci/build-extension.sh              lint + production build (a rebuild by hand)
#   .ci/build-extension.sh --lint       eslint + prettier only
#   .ci/build-extension.sh --link       build, then make an editable install
#                                       visible to Jupyter (editable wheels carry
#                                       no data files)
#   .ci/build-extension.sh --link-only  only that last step (after `pip install -e .`)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
mode=${1:-}

need_lab() {
  "$PYTHON" -c "import jupyterlab" 2>/dev/null || "$PYTHON" -m pip install -q "jupyterlab>=4.1,<5"
  # the npm build asks this Python, not the first `python` on PATH, for Lab's staging
  # folder (extension/scripts/lab-staging.mjs); absolute, as npm runs in extension/
  NBSCALE_BUILD_PYTHON=$("$PYTHON" -c 'import sys; print(sys.executable)')
  export NBSCALE_BUILD_PYTHON
}

lint() {
  (
    cd extension
    [ -d node_modules ] || npm ci --no-audit --no-fund
    npm run lint
  )
}

build() {
  need_lab
  (
    cd extension
    npm ci --no-audit --no-fund
    npm run lint
    npm run build:prod
    cp install.json ../nbscale/labextension/install.json
  )
}

link() {
  [ -f nbscale/labextension/package.json ] || { echo "build the extension first" >&2; exit 1; }
  need_lab
  cp extension/install.json nbscale/labextension/install.json
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
  --lint) lint ;;
  *) echo "usage: $0 [--lint|--link|--link-only]" >&2; exit 2 ;;
esac
if [ "$mode" = --link ] || [ "$mode" = --link-only ]; then
  "$PYTHON" -m jupyter labextension list 2>&1 | grep -q "nbscale.*enabled" \
    || { echo "nbscale labextension not enabled after linking" >&2; exit 1; }
fi
