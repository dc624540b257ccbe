"""Sweeps over /nbscale/api/sweeps, without a server: what the handlers answer for a sweep
in the store whose Optuna journal holds real trials (tests/support/sweep_store.py)."""

from __future__ import annotations

import pytest
from nbscale.server_ext import sweeps as api
from nbscale.server_ext.errors import translate
from nbscale.server_ext.models import DescribeSweep, ListSweepsQuery

from nbscale.config import load as load_config
from nbscale.errors import Conflict, NotFound
from nbscale.store import get_store
from nbscale.store.sweeps import get_sweep
from tests.support.sweep_store import add_trial, planted_sweep


@pytest.fixture
def config():
    return load_config()


@pytest.fixture
def planted(tmp_path):
    spec, study = planted_sweep(tmp_path, trials=6)
    add_trial(spec, study, {"lr": 0.05, "batch": 32, "layers": 3}, [0.9, 0.6, 0.42], cost=0.25)
    add_trial(spec, study, {"lr": 0.011, "batch": 64, "layers": 4}, [0.8, 0.3, 0.05], cost=0.5)
    add_trial(spec, study, {"lr": 0.0002, "batch": 32, "layers": 2}, [2.0], state="PRUNED")
    add_trial(spec, study, {"lr": 0.09, "batch": 64, "layers": 6}, [], state="FAIL")
    add_trial(spec, study, {"lr": 0.02, "batch": 32, "layers": 5}, [0.7, 0.2], state="RUNNING")
    return spec, study


def test_a_sweep_is_listed_with_its_progress_and_best_value(planted, config):
    spec, _ = planted
    page = api._list(ListSweepsQuery(), config)
    assert len(page.sweeps) == 1
    s = page.sweeps[0]
    assert (s.id, s.name, s.backend, s.backend_type) == (spec.id, "lr-sweep", "local", "local")
    assert (s.status, s.objective, s.planned) == ("RUNNING", "val_loss:min", 6)
    assert (s.done, s.running) == (4, 1)  # succeeded 2, pruned 1, failed 1
    assert (s.best_trial, s.best_value) == (1, pytest.approx(0.05))
    assert s.cost == pytest.approx(0.75)


def test_the_list_honours_its_limit_newest_first(tmp_path, config):
    made = [planted_sweep(tmp_path, name=f"sweep-{i}")[0] for i in range(3)]
    ids = [s.id for s in api._list(ListSweepsQuery(limit=2), config).sweeps]
    assert ids == [made[2].id, made[1].id]


def test_a_sweep_is_described_with_its_trials_best_first(planted, config):
    spec, _ = planted
    body = api._describe(spec.id, config)
    assert isinstance(body, DescribeSweep)
    assert [t.number for t in body.trials] == [1, 4, 0, 2, 3]  # by value, else by last value
    assert [t.status for t in body.trials] == [
        "SUCCEEDED", "RUNNING", "SUCCEEDED", "PRUNED", "FAILED",
    ]  # fmt: skip
    assert body.best is not None and body.best.number == 1
    assert body.best.params == {"lr": 0.011, "batch": 64, "layers": 4}
    assert body.trials[1].value is None and body.trials[1].last == pytest.approx(0.2)
    assert body.trials[1].steps == 2 and body.trials[1].ended is None
    assert body.counts == {"SUCCEEDED": 2, "PRUNED": 1, "FAILED": 1, "RUNNING": 1}
    # what goes over the wire is the engine's view, unchanged
    from nbscale import sweep_runs

    assert body.model_dump(mode="json", exclude={"trials", "best"}) == {
        k: v for k, v in sweep_runs.get(spec.id).view().to_dict().items()
        if k not in ("trials", "best")
    }  # fmt: skip


def test_a_sweep_whose_driver_ended_is_shown_stopped(planted, config):
    from nbscale.store.sweeps import update_sweep

    spec, _ = planted
    update_sweep(get_store(), spec.id, info_patch={"driver_pid": 2**22 + 7})
    body = api._describe(spec.id, config)
    assert body.status == "STOPPED"
    assert any("run the same sweep again" in n for n in body.notes)


def test_cancel_marks_the_sweep_and_its_running_trial_cancelled(planted, config):
    spec, _ = planted
    body = api._cancel(spec.id, config)
    assert body.status == "CANCELLED"
    assert get_sweep(get_store(), spec.id).status == "CANCELLED"
    assert {t.number: t.status for t in body.trials}[4] == "CANCELLED"
    # a second cancel is refused: a 409 with the reason
    with pytest.raises(Conflict) as err:
        api._cancel(spec.id, config)
    status, payload = translate(err.value)
    assert status == 409 and "already ended (CANCELLED)" in payload["message"]


@pytest.mark.parametrize("call", [api._describe, api._cancel])
def test_an_unknown_sweep_is_a_404_with_a_hint(call, config):
    with pytest.raises(NotFound) as err:
        call("no-such-sweep", config)
    status, payload = translate(err.value)
    assert status == 404 and payload["error"] == "not_found"
    assert "no sweep 'no-such-sweep'" in payload["message"]


@pytest.mark.parametrize("limit", ["0", "501", "many"])
def test_a_bad_limit_is_refused(limit):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        ListSweepsQuery.model_validate({"limit": limit})
    status, payload = translate(err.value)
    assert status == 400 and payload["message"].startswith("limit:")


def test_the_routes_are_registered_and_documented():
    from nbscale.server_ext.app import ROUTES
    from nbscale.server_ext.openapi import document

    handlers = {pattern: handler for pattern, handler in ROUTES}
    assert handlers["nbscale/api/sweeps"] is api.SweepsHandler
    one = next(p for p in handlers if p.startswith("nbscale/api/sweeps/"))
    assert handlers[one] is api.SweepHandler
    paths = document()["paths"]
    assert set(paths["/nbscale/api/sweeps/{sweep_id}"]) == {"get", "delete"}
