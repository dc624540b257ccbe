"""Kubeflow: jobs as Trainer TrainJobs, endpoints as KServe InferenceServices, pipelines on KFP.

Importing the package loads only ``PLATFORM`` (its entry point in ``nbscale.platforms``);
each role's module is imported when used: ``jobs`` (TrainJobs; ``trainjobs`` adds the
namespace's TrainJobs and runtimes, and attaching to one), ``endpoints`` (KServe),
``pipelines`` (KFP runs and the KFP compile target), ``settings`` (the ``[backends.NAME]``
table), and the helpers ``manifests`` (the objects, as dicts), ``cluster`` (kube
configuration) and ``podlogs``.
"""

from __future__ import annotations

from ..platform import Platform

PLATFORM = Platform(
    type="kubeflow",
    title="Kubeflow",
    jobs="nbscale.backends.kubeflow.trainjobs:TrainJobBackend",
    endpoints="nbscale.backends.kubeflow.endpoints:KServeEndpoints",
    pipelines="nbscale.backends.kubeflow.pipelines:KubeflowPipelineBackend",
    sweeps="nbscale.backends.kubeflow.sweeps:KatibSweeps",
    settings="nbscale.backends.kubeflow.settings:settings",
    compile_target="kfp",
    extra="kubeflow",
)
