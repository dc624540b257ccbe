"""nbscale: notebooks to distributed jobs, pipelines and endpoints, on any backend."""

from __future__ import annotations

from . import distributed
from .errors import NbscaleError
from .jobs import Job, job, jobs, submit
from .metrics import log_metric
from .specs import Entry, JobSpec

__version__ = "0.1.0"

__all__ = [
    "Entry",
    "distributed",
    "Job",
    "JobSpec",
    "NbscaleError",
    "__version__",
    "job",
    "jobs",
    "log_metric",
    "submit",
]


def load_ipython_extension(ipython):  # ``%load_ext nbscale``
    from .magics import load_ipython_extension as load

    load(ipython)
