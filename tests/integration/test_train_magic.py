"""``%%train`` in real IPython kernels (jupyter_client) running real torchrun jobs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nbscale.backends.local.processes import job_processes
from nbscale.store import get_store
from nbscale.store.jobs import CANCELLED, FAILED, RUNNING, SUCCEEDED, get_job, list_jobs
from tests.support import wait_for

pytestmark = pytest.mark.timeout(240)
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _jobs():
    return list_jobs(get_store())[0]


def test_closures_lambdas_classes_aliased_imports_and_a_local_module_travel(kernel, tmp_path):
    (tmp_path / "helpers.py").write_text("OFFSET = 100\n\ndef shift(v):\n    return v + OFFSET\n")
    k = kernel()
    k.ok("""
        import numpy as np
        import torch
        from torch import nn
        import torch.nn.functional as F
        import helpers as hp
        from helpers import shift

        factor = 3
        def make(k):
            return lambda v: v * k * factor      # a closure returning a lambda
        times2 = make(2)
        square = lambda v: v * v

        class Net(nn.Module):                    # defined in the notebook
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 2)
            def forward(self, x):
                return F.relu(self.fc(x))
        """)
    reply = k.ok("""
        %%train --procs-per-node 2 --outputs model,values,ranks,wrapped --log-ranks all
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel
        model = Net()
        wrapped = DistributedDataParallel(Net())   # comes back unwrapped: no process group in the kernel
        out = model(torch.ones(3, 4))
        rank = torch.tensor([dist.get_rank() + 1])
        dist.all_reduce(rank)                      # 1 + 2: both ranks took part
        ranks = int(rank.item())
        values = [times2(1), square(3), hp.shift(1), shift(2), float(np.sum(np.arange(3))), tuple(out.shape)]
        print("rank", dist.get_rank(), "of", dist.get_world_size(), values)
        """)
    assert "[rank 0] rank 0 of 2" in reply.text and "[rank 1] rank 1 of 2" in reply.text
    sent = next(line for line in reply.text.splitlines() if line.startswith("sent "))
    assert (
        "Net (" in sent and "times2 (" in sent and "square (" in sent
    )  # what was sent, with sizes
    imports, files = sent.split("imports: ")[1].split("; ")
    assert (
        set(imports.split(", ")) == {"torch", "hp", "shift", "np"}
        and files == "1 local source file"
    )
    assert "succeeded" in reply.text and "text/html" in reply.mimes
    check = k.ok("print(isinstance(model, Net), values, ranks, type(wrapped).__name__)")
    assert check.text.strip() == "True [6, 9, 101, 102, 3.0, (3, 2)] 3 Net"
    jobs = _jobs()
    assert len(jobs) == 1 and jobs[0].status == SUCCEEDED and jobs[0].spec["procs_per_node"] == 2
    listing = k.ok("%jobs")
    assert jobs[0].id in listing.text and "SUCCEEDED" in listing.text
    logs = k.ok(f"%logs {jobs[0].id} --rank 1")
    assert "rank 1 of 2" in logs.text


def test_a_large_tensor_input_arrives_intact(kernel):
    k = kernel()
    k.ok("""
        import torch
        big = torch.arange(16_000_000, dtype=torch.float64)  # 128 MB
        expected = float(big.sum())
        """)
    reply = k.ok("""
        %%train --procs-per-node 2 --outputs total,nbytes
        import torch.distributed as dist
        part = big[dist.get_rank()::2].sum()
        dist.all_reduce(part)
        total = float(part)
        nbytes = big.element_size() * big.numel()
        """)
    assert "succeeded" in reply.text
    assert k.ok("print(total == expected, nbytes)").text.strip() == "True 128000000"


def test_an_unpicklable_input_is_named_and_nothing_is_submitted(kernel, nbscale_home):
    k = kernel()
    k.ok("fh = open('data.txt', 'w')\nrows = (i for i in range(3))\nok = 1")
    reply = k.run("""
        %%train --procs-per-node 2
        print(fh, list(rows), ok)
        """)
    assert reply.status == "error" and reply.error["ename"] == "CaptureError"
    assert "fh: is an open file" in reply.error_text and "rows: is a generator" in reply.error_text
    assert "nothing was submitted" in reply.error_text
    assert len(reply.error["traceback"]) <= 4  # the message, not a page of magic internals
    assert _jobs() == []
    assert not list(nbscale_home.glob("bundles/*.zip"))


def test_bad_arguments_get_one_message_each_and_nothing_is_submitted(kernel):
    k = kernel()
    cases = {
        "--no-such-option": "unrecognized arguments: --no-such-option",
        "--procs-per-node two": "invalid int value: 'two'",
        "--procs-per-node 0": "procs_per_node: must be a whole number >= 1",
        "--backend nowhere": "unknown backend 'nowhere'",
        "--outputs 'a b'": "is not a comma-separated list of Python names",
        "--log-ranks first": "is not 'all' or rank numbers",
    }
    assert "--outputs A,B" in k.ok("%%train --help\nx = 1\n").text
    for line, message in cases.items():
        reply = k.run(f"%%train {line}\nx = 1\n")
        assert reply.status == "error", line
        assert message in reply.error_text, (line, reply.error_text)
    assert _jobs() == []


def test_dry_run_shows_the_bundle_and_the_exact_spec(kernel):
    k = kernel()
    k.ok("import json\nrows = list(range(10))")
    reply = k.ok("""
        %%train --procs-per-node 2 --outputs n --dry-run
        n = len(json.dumps(rows))
        """)
    err = reply.streams["stderr"]
    assert "dry run: nothing submitted" in err
    assert "import json" in err and "rows" in err and "cloudpickle" in err
    spec = json.loads(reply.streams["stdout"])  # stdout is exactly the spec
    assert spec["procs_per_node"] == 2 and spec["entry"]["kind"] == "bundle"
    assert _jobs() == []


def test_a_missing_output_is_a_clear_failure_naming_it(kernel):
    k = kernel()
    reply = k.run("""
        %%train --outputs model,histroy
        model = 1
        history = [1]
        """)
    assert reply.status == "error" and reply.error["ename"] == "CellJobFailed"
    assert "did not define 'histroy', named in --outputs" in reply.error_text
    assert "history" in reply.error_text  # the names it did define, to spot the typo
    assert _jobs()[0].status == FAILED
    assert k.ok("print('model' in dir())").text.strip() == "False"  # nothing half-loaded


def test_an_exception_on_rank_1_is_raised_in_the_notebook_at_the_cell_line(kernel):
    k = kernel()
    reply = k.run("""
        %%train --procs-per-node 2
        import torch.distributed as dist

        def check(rank):
            if rank == 1:
                raise ValueError(f"bad shard on rank {rank}")

        check(dist.get_rank())
        """)
    assert reply.status == "error" and reply.error["ename"] == "CellJobFailed"
    # the visible cell: line 1 is %%train, so `raise` is line 6 and the call is line 8
    assert (
        "rank 1 failed at line 6 of the cell: ValueError: bad shard on rank 1" in reply.error_text
    )
    assert 'File "<%%train cell>", line 8, in <module>' in reply.error_text
    assert 'raise ValueError(f"bad shard on rank {rank}")' in reply.error_text
    record = _jobs()[0]
    assert record.status == FAILED and record.failed_rank == 1


def _running_job(timeout: float = 60):
    def ready():
        jobs = _jobs()
        if (
            jobs
            and jobs[0].status == RUNNING
            and (Path(jobs[0].info["job_dir"]) / "logs" / "rank-1.log").exists()
        ):
            return jobs[0]
        return None

    return wait_for(ready, timeout=timeout, what="a running job")


def test_interrupt_cancels_the_job_and_leaves_no_process(kernel):
    k = kernel()
    k.start("""
        %%train --procs-per-node 2
        import time
        print("started", flush=True)
        while True:
            time.sleep(0.1)
        """)
    record = _running_job()
    wait_for(lambda: job_processes(record.id), what="job processes")
    k.km.interrupt_kernel()
    reply = k.kc.get_shell_msg(timeout=60)
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "JobInterrupted"
    assert get_job(get_store(), record.id).status == CANCELLED
    assert job_processes(record.id) == []
    assert k.ok("print('alive')").text.strip() == "alive"  # the kernel itself is fine


def test_detach_leaves_the_job_running_and_cancel_stops_it(kernel):
    k = kernel()
    k.start("""
        %%train --detach
        import time
        while True:
            time.sleep(0.1)
        """)
    record = _running_job_single()
    k.km.interrupt_kernel()
    reply = k.kc.get_shell_msg(timeout=60)
    assert reply["content"]["status"] == "error"
    assert get_job(get_store(), record.id).status == RUNNING and job_processes(record.id)
    out = k.ok(f"%cancel {record.id}")
    assert "CANCELLED" in out.text
    assert job_processes(record.id) == []


def _running_job_single(timeout: float = 60):
    def ready():
        jobs = _jobs()
        if (
            jobs
            and jobs[0].status == RUNNING
            and (Path(jobs[0].info["job_dir"]) / "logs" / "rank-0.log").exists()
        ):
            return jobs[0]
        return None

    return wait_for(ready, timeout=timeout, what="a running job")


def test_async_returns_a_job_and_a_second_kernel_attaches_and_gets_the_outputs(kernel, tmp_path):
    k1 = kernel()
    k1.ok("import torch\nsteps = 5")
    reply = k1.ok("""
        %%train --procs-per-node 2 --async --outputs total
        import time
        import torch.distributed as dist
        import nbscale
        t = torch.zeros(1)
        for step in range(steps):
            t += 1
            nbscale.log_metric("loss", 1.0 / (step + 1), step=step)
            time.sleep(0.3)
        dist.all_reduce(t)
        total = int(t.item())
        """)
    job_id = re.search(r"job:\s+(\S+)", reply.text).group(1)
    k1.ok("j = _")
    assert "text/html" in reply.mimes and "total" not in k1.ok("print(dir())").text
    k2 = kernel()
    attached = k2.ok(f"%attach {job_id}")
    assert "succeeded" in attached.text and "metrics: loss=0.2" in attached.text
    assert k2.ok("print(total)").text.strip() == "10"
    assert k1.ok("print(j.result())").text.strip() == "{'total': 10}"


def test_widget_view_shows_phase_logs_and_a_metrics_chart(kernel):
    k = kernel(NBSCALE_PROGRESS="widget")
    reply = k.ok("""
        %%train --outputs n
        import nbscale
        for step in range(4):
            nbscale.log_metric("loss", 4 - step, step=step)
        print("hello from the job")
        n = 4
        """)
    assert WIDGET_MIME in reply.mimes
    values = "\n".join(reply.widget_values)
    assert "succeeded" in values and "[rank 0] hello from the job" in values
    assert "<svg" in values and "loss: 1 (step 3)" in values


@pytest.mark.timeout(300)
def test_quickstart_notebook_runs_headless(nbscale_cli, tmp_path):
    out = tmp_path / "quickstart-out.ipynb"
    proc = nbscale_cli("quickstart", "--output", str(out), timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    accuracy = float(re.search(r"accuracy: ([0-9.]+)", proc.stdout).group(1))
    assert accuracy > 0.9
    assert str(out) in proc.stdout and out.exists()
    nb = json.loads(out.read_text())
    images = [
        o for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})
    ]
    assert images, "the loss plot is missing"
