"""Code that runs inside a job or an endpoint, on any backend.

Nothing here imports Jupyter; the same modules run under local torchrun, in a
Kubeflow pod and in a SageMaker container.
"""
