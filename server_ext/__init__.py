"""nbscale's jupyter-server extension: the REST API behind the JupyterLab panel.

Handlers translate HTTP to engine calls and engine errors to status codes
(``errors.py``); they hold no behaviour of their own.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nbscale")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

# bumped when a route or a body changes incompatibly; the panel refuses another
API_VERSION = 1


def _jupyter_server_extension_points():
    from .app import NbscaleExtension

    return [{"module": "nbscale.server_ext", "app": NbscaleExtension}]


def _jupyter_labextension_paths():
    return [{"src": "../labextension", "dest": "nbscale"}]
