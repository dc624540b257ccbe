"""nbscale.checkpoint in a real two-rank job: each rank checkpoints into the job's folder or the given one."""

from __future__ import annotations

import json
import os
import textwrap

from nbscale import checkpoint as ckpt
from nbscale.jobs import submit
from nbscale.specs import Entry, JobSpec

SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    import nbscale.checkpoint as ckpt
    from nbscale import distributed

    distributed.init()
    import torch.distributed as dist
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = ckpt.load(model=model, optimizer=opt)
    start = state.step + 1 if state else 0
    for step in range(start, start + 3):
        ckpt.save(step, model=model, optimizer=opt)
    if dist.get_rank() == 1:
        print(json.dumps({"dir": str(ckpt.default_dir()), "start": start}))
""")


def test_a_two_rank_job_checkpoints_into_its_folder_or_the_given_one(write_script, tmp_path):
    script = write_script("train.py", SCRIPT)
    job = submit(JobSpec(Entry.from_path(str(script)), procs_per_node=2))
    record = job.wait(timeout=150)
    assert record.status == "SUCCEEDED", job.logs()
    seen = json.loads(job.logs(1).strip().splitlines()[-1])
    job_ckpts = os.path.join(record.info["job_dir"], "checkpoints")
    assert seen == {"dir": job_ckpts, "start": 0}
    assert [s for s, _ in ckpt.checkpoints(job_ckpts)] == [1, 2]

    # --checkpoint-dir, relative to where the job was submitted; a second job resumes from it
    for expected_start in (0, 3):
        job = submit(
            JobSpec(Entry.from_path(str(script)), procs_per_node=2, checkpoint_dir="ckpts")
        )
        assert job.wait(timeout=150).status == "SUCCEEDED", job.logs()
        seen = json.loads(job.logs(1).strip().splitlines()[-1])
        assert seen == {"dir": str(tmp_path / "ckpts"), "start": expected_start}
    assert [s for s, _ in ckpt.checkpoints(tmp_path / "ckpts")] == [4, 5]
