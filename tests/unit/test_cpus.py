"""Every default sized by CPUs counts the CPUs this process may run on (its affinity, which
``taskset``, a cpuset or a container narrows), and they all agree on one count."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nbscale.backends.local.sweeps import concurrency
from nbscale.cpus import allowed_cpus
from nbscale.pipelines import first_kernel
from nbscale.pipelines.threads import THREAD_VARIABLES, thread_env
from nbscale.specs import Entry, JobSpec
from nbscale.sweeps.spec import SweepSpec
from tests.support.cpus import one_cpu

PIPELINE = Path(__file__).resolve().parents[2] / "examples" / "pipeline" / "pipeline.yaml"


@pytest.fixture
def narrowed():
    """This thread narrowed to one CPU, as ``taskset -c N`` would start it; restored after."""
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this platform")
    with one_cpu():
        yield


def test_a_process_narrowed_to_one_cpu_sizes_its_work_for_one(narrowed, tmp_path, monkeypatch):
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert allowed_cpus() == 1
    # four steps at once on one CPU: one BLAS thread each, never 0
    assert thread_env(4)["OMP_NUM_THREADS"] == "1"
    # a sweep asking for 4 trials at once gets 1 here, and says why
    script = tmp_path / "train.py"
    script.write_text("print(1)\n")
    sweep = SweepSpec(
        JobSpec(entry=Entry.from_path(str(script))),
        "lr=uniform(0,1)",
        "loss:min",
        trials=4,
        parallel=4,
    )
    assert concurrency(sweep) == (1, "nbscale may use 1 core here")
    # the pipeline's default width is 1 here, so its first kernel gets no thread share at all
    plan = first_kernel.plan(PIPELINE, {})
    assert plan is not None
    assert not set(THREAD_VARIABLES) & (set(plan.env) - set(os.environ))
