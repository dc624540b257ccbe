#!/usr/bin/env bash
# Build the JupyterLab panel (production) into nbscale/labextension, where
# `pip install .` picks it up as data files. Needs node >= 20 + npm and a
# Python with jupyterlab (the builder compiles against Lab's shared packages).
#
#   .ci/build-extension.sh            build only (run before `pip install .`)
#   .ci/build-extension.sh --link     also make an editable install
#                                     (`pip install -e .`) visible to Jupyter:
#                                     editable wheels carry no data files
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
cd extension
if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund
else
  npm install --no-audit --no-fund
fi
npm run lint
npm run build:prod
cp install.json ../nbscale/labextension/install.json
cd ..

if [ "${1:-}" = "--link" ]; then
  prefix=$("$PYTHON" -c 'import sys; print(sys.prefix)')
  mkdir -p "$prefix/share/jupyter/labextensions" "$prefix/etc/jupyter/jupyter_server_config.d"
  target="$prefix/share/jupyter/labextensions/nbscale"
  if [ -e "$target" ] && [ ! -L "$target" ]; then
    rm -rf "$target"  # a copy from an earlier non-editable install
  fi
  ln -sfn "$PWD/nbscale/labextension" "$target"
  cp jupyter-config/server-config/nbscale.json "$prefix/etc/jupyter/jupyter_server_config.d/nbscale.json"
fi
"$PYTHON" -m jupyter labextension list 2>&1 | grep -q "nbscale.*enabled" \
  || echo "note: nbscale is built; run 'pip install .' (or this script with --link after 'pip install -e .')"
