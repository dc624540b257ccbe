"""The serving runtime: one HTTP server for a model, used locally, in KServe and in SageMaker.

``artifact.package`` writes a model in the SageMaker PyTorch layout;
``python -m nbscale.serving --model-dir DIR`` serves it (``server.py``).
"""

from .artifact import package, read_manifest, sign, verify

__all__ = ["package", "read_manifest", "sign", "verify"]
