"""The local backend's checks before anything starts: bad specs, and which GPUs a job may use."""

from __future__ import annotations

import pytest

import nbscale
from nbscale.backends.local import gpus
from nbscale.store import get_store
from nbscale.store.jobs import list_jobs


def test_bad_specs_raise_one_clear_error_and_write_nothing(write_script):
    script = write_script("ok.py", "print(1)\n")
    entry = nbscale.Entry.from_path(str(script))
    cases = [
        (dict(procs_per_node=0), "procs_per_node: must be a whole number >= 1"),
        (dict(nodes="2"), "nodes: must be a whole number"),
        (dict(name="Bad Name!"), "name: 'Bad Name!' is not a valid job name"),
        (dict(env={"RANK": "3"}), "RANK is set by nbscale itself"),
        (dict(gpus_per_proc=-1), "gpus_per_proc"),
    ]
    for kwargs, message in cases:
        with pytest.raises(nbscale.errors.SpecError, match=message.replace("(", r"\(")):
            nbscale.submit(nbscale.JobSpec(entry=entry, **kwargs))
    with pytest.raises(nbscale.errors.SpecError, match="does not exist"):
        nbscale.JobSpec(entry=nbscale.Entry.from_path("missing.py"))
    with pytest.raises(
        nbscale.errors.NotFound, match="unknown backend 'nope'.*known backends: local"
    ):
        nbscale.submit(nbscale.JobSpec(entry=entry, backend="nope"))
    if not gpus.machine_gpus():
        with pytest.raises(nbscale.errors.SpecError, match="no CUDA GPU"):
            nbscale.submit(nbscale.JobSpec(entry=entry, gpus_per_proc=1))
    assert list_jobs(get_store())[1] == 0
    assert not any((get_store().path.parent / "jobs").glob("*"))


def test_cuda_visible_devices_limits_the_gpus_like_cuda_does():
    from nbscale.backends.local.gpus import visible

    found = [(0, "GPU-aaa"), (1, "GPU-bbb"), (2, "GPU-ccc"), (3, "GPU-ddd")]
    assert visible(found, None) == [0, 1, 2, 3]
    assert visible(found, "") == [] and visible(found, "-1") == []
    assert visible(found, "2,0") == [2, 0]
    assert visible(found, "1,7,0") == [1]  # CUDA stops at the first unknown entry
    assert visible(found, "GPU-ccc,GPU-a") == [2, 0]  # UUIDs and unique prefixes
    assert visible(found, "1,1") == [1]
