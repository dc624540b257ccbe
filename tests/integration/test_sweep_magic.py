"""``%%train --sweep`` in real IPython kernels (jupyter_client); every trial is a real
torchrun job running the captured cell with its values.

The planted objective: ``val_loss = (log10(lr) + 2)^2 + 0.1/(step+1)``, smallest at
``lr = 0.01``; the cell reads ``lr`` as a plain variable or with ``nbscale.param``.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time

import pytest

from nbscale import sweep_runs
from nbscale.store import get_store
from nbscale.store.jobs import list_jobs
from nbscale.store.sweeps import list_sweeps
from tests.support import wait_for
from tests.support.kernel import Kernel

pytestmark = pytest.mark.timeout(300)

PLANTED_CELL = """
import math, time
for step in range(3):
    val = (math.log10(lr) + 2) ** 2 + 0.1 / (step + 1)
    nbscale.log_metric("val_loss", val, step=step)
    time.sleep(pause)
best_lr = lr
curve = [round(val, 6)]
"""


def run_collecting(k: Kernel, code: str, timeout: float = 240) -> tuple[str, list]:
    """Execute a cell; its status and every output message, in order."""
    msgs: list = []
    reply = k.kc.execute_interactive(
        textwrap.dedent(code),
        output_hook=lambda m: msgs.append((m["msg_type"], m["content"])),
        timeout=timeout,
    )
    return reply["content"]["status"], msgs


def outputs(msgs: list) -> list:
    return [
        (t, c) for t, c in msgs if t in ("display_data", "update_display_data", "execute_result")
    ]


def sweep_jobs(sweep_id: str) -> list:
    return [
        r
        for r in list_jobs(get_store(), limit=1000)[0]
        if r.spec.get("tags", {}).get("nbscale-sweep") == sweep_id
    ]


def test_a_swept_cell_gets_plain_variables_and_the_best_outputs_in_one_live_output(
    kernel, nbscale_home
):
    k = kernel()
    k.ok("import nbscale\npause = 0.0")
    status, msgs = run_collecting(
        k,
        "%%train --sweep lr=loguniform(1e-4, 1e-1) --objective val_loss:min --trials 4 "
        "--parallel 2 --pruner none --seed 11 --outputs best_lr,curve\n" + PLANTED_CELL,
    )
    errors = [c for t, c in msgs if t == "error"]
    assert status == "ok", errors
    # one output: displayed once with an id, then only updated in place
    shown = outputs(msgs)
    assert shown[0][0] == "display_data" and len(shown) >= 3
    display_id = shown[0][1]["transient"]["display_id"]
    assert all(t == "update_display_data" for t, _ in shown[1:])
    assert {c["transient"]["display_id"] for _, c in shown} == {display_id}
    assert not [c for t, c in msgs if t == "stream" and c["name"] == "stdout"]
    final = shown[-1][1]["data"]
    assert "SUCCEEDED, 4/4 trials done" in final["text/plain"]
    assert "outputs of the best trial" in final["text/plain"]
    if "plots:" in final["text/plain"]:  # matplotlib is there: the plots are in the same output
        assert final["text/html"].count("data:image/png;base64,") == 2
    # the cell read plain `lr` (never defined in the notebook): each trial had its own value
    facts = json.loads(
        k.ok(
            "import json\n"
            "t = sweep.trials\n"
            "print(json.dumps({'best_lr': best_lr, 'curve': curve, 'best': sweep.best_params,"
            " 'status': sweep.status, 'lrs': list(t.param_lr), 'values': list(t.value),"
            " 'number': sweep.best.number, 'defined': 'lr' in dir()}))"
        ).text
    )
    assert facts["status"] == "SUCCEEDED" and not facts["defined"]
    assert len(set(facts["lrs"])) == 4
    assert facts["values"] == sorted(facts["values"])  # best first
    assert facts["best"] == {"lr": facts["lrs"][0]} and facts["best_lr"] == facts["lrs"][0]
    expected = (__import__("math").log10(facts["best_lr"]) + 2) ** 2 + 0.1 / 3
    assert abs(facts["curve"][0] - expected) < 1e-5 and abs(facts["values"][0] - expected) < 1e-9
    # the cell was captured once: one bundle, kept beside the study; each trial took a copy
    sweep_id = list_sweeps(get_store())[0].id
    assert len(sweep_jobs(sweep_id)) == 4
    assert [p.name for p in (nbscale_home / "sweeps").glob("*.zip")] == [f"{sweep_id}.cell.zip"]
    assert not list((nbscale_home / "sweeps").glob(".*.zip"))
    assert not list((nbscale_home / "bundles").glob("*.zip"))


def test_a_trial_whose_cell_raises_is_failed_counted_not_scored_and_its_values_retried(
    kernel, tmp_path
):
    k = kernel()
    k.ok(f"import nbscale\npause = 0.0\nmarker = {str(tmp_path / 'failed-once')!r}")
    status, msgs = run_collecting(
        k,
        "%%train --sweep lr=loguniform(1e-4, 1e-1) --objective val_loss:min --trials 3 "
        "--parallel 1 --pruner none --seed 2\n"
        "import os\n"
        "lr = nbscale.param('lr')\n"
        "try:\n"
        "    os.close(os.open(marker, os.O_CREAT | os.O_EXCL))  # the first trial only\n"
        "    raise RuntimeError('planted failure')\n"
        "except FileExistsError:\n"
        "    pass\n" + PLANTED_CELL,
    )
    assert status == "ok", [c for t, c in msgs if t == "error"]
    final = outputs(msgs)[-1][1]["data"]["text/plain"]
    assert "SUCCEEDED, 3/3 trials done (1 failed)" in final
    assert "RuntimeError: planted failure" in final
    view = sweep_runs.get(list_sweeps(get_store())[0].id).view()
    failed = [t for t in view.trials if t.status == "FAILED"]
    assert len(failed) == 1 and failed[0].value is None  # counted, never scored 0
    assert "RuntimeError: planted failure" in failed[0].error
    assert view.counts() == {"FAILED": 1, "SUCCEEDED": 3}
    retried = [t for t in view.trials if t.params == failed[0].params and t.status == "SUCCEEDED"]
    assert len(retried) == 1 and retried[0].number > failed[0].number
    assert view.best.value == min(t.value for t in view.trials if t.value is not None)


def test_dry_run_and_bad_input_start_nothing(kernel, nbscale_home):
    k = kernel()
    k.ok("import nbscale\npause = 0.0")
    reply = k.ok(
        "%%train --sweep lr=loguniform(1e-4, 1e-1) --objective val_loss:min --trials 5 "
        "--dry-run\n" + PLANTED_CELL
    )
    sent = json.loads(reply.streams["stdout"])
    assert sent["trials"] == 5 and sent["objective"] == "val_loss:min"
    assert sent["job"]["entry"]["kind"] == "bundle"
    assert "dry run: nothing started" in reply.streams["stderr"]
    bad = k.run(
        "%%train --sweep lr=loguniform(1e-4, 1e-1) --objective accuracy:max\n" + PLANTED_CELL
    )
    assert bad.status == "error" and bad.error["ename"] == "SpecError"
    assert "the code never logs 'accuracy'" in bad.error_text and len(bad.error["traceback"]) == 1
    assert list_sweeps(get_store()) == [] and list_jobs(get_store())[0] == []
    assert not list((nbscale_home / "sweeps").glob("*.zip"))
    assert not list((nbscale_home / "sweeps").glob(".*.zip"))


def _kill(k: Kernel) -> None:
    pid = k.km.provisioner.pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not k.km.is_alive(), 30, interval=0.1, what="the kernel to die")
    k.kc.stop_channels()
    k.km.cleanup_resources()


def test_a_killed_kernel_resumes_the_sweep_when_the_cell_runs_again(kernel):
    cell = (
        "%%train --sweep lr=loguniform(1e-4, 1e-1) --objective val_loss:min --trials 5 "
        "--parallel 2 --pruner none --outputs best_lr\n" + PLANTED_CELL
    )
    first = kernel()
    first.ok("import nbscale\npause = 1.0")
    first.start(cell)
    sweep_id = wait_for(lambda: list_sweeps(get_store()), 120, interval=0.3)[0].id
    handle = sweep_runs.get(sweep_id)
    wait_for(
        lambda: handle.view().counts().get("SUCCEEDED", 0) >= 2,
        180,
        interval=0.3,
        what="two finished trials",
    )
    _kill(first)
    before = handle.view()
    finished = {t.number: t.job_id for t in before.trials if t.status == "SUCCEEDED"}
    assert len(finished) >= 2 and before.status in ("STOPPED", "RUNNING")
    time.sleep(0.5)

    second = kernel()
    second.ok("import nbscale\npause = 1.0")  # the same notebook state: the same sweep
    status, msgs = run_collecting(second, cell)
    assert status == "ok", [c for t, c in msgs if t == "error"]
    after = handle.view()
    assert after.id == sweep_id and after.status == "SUCCEEDED"
    assert after.counts() == {"SUCCEEDED": 5}
    assert {t.number: t.job_id for t in after.trials if t.number in finished} == finished
    jobs = sweep_jobs(sweep_id)
    assert len(jobs) == 5  # no finished trial's values ran again
    values = [json.loads(j.spec["env"]["NBSCALE_PARAMS"])["lr"] for j in jobs]
    assert len(set(values)) == 5
    got = json.loads(second.ok("import json; print(json.dumps([best_lr, sweep.best_params]))").text)
    assert got == [after.best.params["lr"], after.best.params]


def test_an_async_sweep_returns_at_once_and_runs_without_the_cell(kernel, nbscale_home):
    from nbscale.backends.local.processes import alive

    k = kernel()
    k.ok("import nbscale\npause = 1.0")
    status, msgs = run_collecting(
        k,
        "%%train --sweep lr=loguniform(1e-4, 1e-1) --objective val_loss:min --trials 3 "
        "--parallel 2 --pruner none --seed 4 --async --outputs best_lr\n" + PLANTED_CELL,
    )
    assert status == "ok", [c for t, c in msgs if t == "error"]
    shown = outputs(msgs)
    assert [t for t, _ in shown] == ["execute_result"]  # the Sweep, shown as its table once
    assert "RUNNING" in shown[0][1]["data"]["text/plain"]
    record = list_sweeps(get_store())[0]
    assert record.status == "RUNNING"
    pid, started = record.info["driver_pid"], record.info["driver_started"]
    assert alive(pid, started) and str(pid) != k.ok("import os; print(os.getpid())").text.strip()
    try:
        # the kernel is free while the background driver runs the trials
        assert k.ok("print(1 + 1)").text.strip() == "2"
        facts = json.loads(
            k.ok(
                "import json\nv = sweep.run()\n"
                "print(json.dumps({'status': v.status, 'n': len(v.trials),"
                " 'best': sweep.best_params, 'out': sweep.best_job.result()['best_lr']}))",
                timeout=240,
            ).text
        )
        assert facts["status"] == "SUCCEEDED" and facts["n"] == 3
        assert facts["out"] == facts["best"]["lr"]
        wait_for(lambda: not alive(pid, started), 30, what="the background driver to end")
    finally:
        if alive(pid, started):
            os.kill(pid, signal.SIGKILL)
    assert len(sweep_jobs(record.id)) == 3
