"""Kubeflow: jobs as Trainer TrainJobs, endpoints as KServe InferenceServices, pipelines on KFP.

Modules are imported when used: ``jobs.KubeflowBackend`` (the ``nbscale.backends``
entry point), ``endpoints.KServeEndpoints`` (``nbscale.endpoint_backends``),
``pipelines`` (KFP runs), ``manifests`` (the objects, as dicts), ``cluster`` (kube
configuration), ``settings`` (the ``[backends.NAME]`` table).
"""
