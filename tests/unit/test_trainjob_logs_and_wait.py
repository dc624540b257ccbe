"""Reading several node logs at once stays in bounded memory, and ``Job.wait(status=)``
knows which statuses a job can still reach."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from nbscale.backends.kubeflow.trainjobs import _merged, trainjob_state
from nbscale.errors import SpecError
from nbscale.jobs import _unreachable, check_status
from nbscale.store.jobs import JobRecord


def test_several_pod_logs_are_read_ahead_only_as_far_as_the_queue():
    produced = [0, 0, 0]
    lock = threading.Lock()

    def endless(node: int):
        for i in itertools.count():
            with lock:
                produced[node] += 1
            yield f"line {i}"

    stream = _merged([(n, endless(n)) for n in range(3)])
    got = [next(stream) for _ in range(10)]
    time.sleep(0.5)  # the readers run ahead as far as they may
    with lock:
        ahead = sum(produced) - len(got)
    assert ahead <= 256 + 3  # the queue, and one line in each reader's hand
    stream.close()  # the readers stop


def test_a_readers_error_reaches_the_caller():
    def broken():
        yield "one"
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        list(_merged([(0, broken()), (1, iter(["a", "b"]))]))


def record(status: str, error: str | None = None) -> JobRecord:
    return JobRecord("j-1", "j", "kf", "kubeflow", status, {}, 0.0, error=error)


def test_which_statuses_can_still_be_reached():
    assert check_status("running") == "RUNNING"
    with pytest.raises(SpecError, match="unknown status 'finished'"):
        check_status("finished")
    assert _unreachable(record("PENDING"), "SUCCEEDED") is None
    assert _unreachable(record("RUNNING"), "FAILED") is None
    assert "it is RUNNING already" in str(_unreachable(record("RUNNING"), "PENDING"))
    err = _unreachable(record("FAILED", "OOMKilled"), "SUCCEEDED")
    assert "will never be SUCCEEDED: it ended FAILED: OOMKilled" in str(err)
    assert _unreachable(record("SUCCEEDED"), "SUCCEEDED") is None


def test_a_trainjobs_state_from_its_conditions():
    def tj(conds=(), jobs=(), suspend=False):
        return {
            "spec": {"suspend": suspend},
            "status": {
                "conditions": [{"type": t, "status": "True", "reason": r} for t, r in conds],
                "jobsStatus": list(jobs),
            },
        }

    assert trainjob_state(tj()) == ("PENDING", "Created")
    assert trainjob_state(tj(suspend=True)) == ("PENDING", "Suspended")
    assert trainjob_state(tj(jobs=[{"name": "node", "active": 1}])) == ("RUNNING", "Running")
    assert trainjob_state(tj([("Complete", "Done")])) == ("SUCCEEDED", "Complete")
    assert trainjob_state(tj([("Failed", "DeadlineExceeded")])) == (
        "FAILED",
        "Failed: DeadlineExceeded",
    )
