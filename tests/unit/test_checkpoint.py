"""nbscale.checkpoint: atomic save/load of model, optimizer, step and RNG states."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch

from nbscale import checkpoint as ckpt
from nbscale.jobs import submit
from nbscale.specs import Entry, JobSpec

pytestmark = pytest.mark.timeout(180)


def _model_and_opt(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, opt


def _train(model, opt, steps: int) -> None:
    for _ in range(steps):
        x = torch.randn(16, 4)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_resume_gives_the_same_parameters_and_random_numbers(tmp_path):
    model, opt = _model_and_opt()
    _train(model, opt, 3)
    path = ckpt.save(3, model=model, optimizer=opt, extra={"loss": 0.5}, directory=tmp_path)
    assert path.name == "ckpt-0000000003.pt"
    expected_draws = (random.random(), np.random.rand(), torch.rand(3))
    _train(model, opt, 2)
    expected = [p.detach().clone() for p in model.parameters()]

    fresh, fresh_opt = _model_and_opt(seed=99)  # different weights and no momentum yet
    state = ckpt.load(model=fresh, optimizer=fresh_opt, directory=tmp_path)
    assert state.step == 3 and state.extra == {"loss": 0.5} and state.path == path
    draws = (random.random(), np.random.rand(), torch.rand(3))
    assert draws[0] == expected_draws[0] and draws[1] == expected_draws[1]
    assert torch.equal(draws[2], expected_draws[2])
    _train(fresh, fresh_opt, 2)  # same weights, momentum and batches as the first run
    for got, want in zip(fresh.parameters(), expected, strict=True):
        assert torch.equal(got, want)


def test_nothing_to_resume_returns_none_and_old_checkpoints_are_pruned(tmp_path):
    model, opt = _model_and_opt()
    assert ckpt.load(model=model, directory=tmp_path / "empty") is None
    for step in range(5):
        ckpt.save(step, model=model, optimizer=opt, directory=tmp_path, keep=2)
    assert [s for s, _ in ckpt.checkpoints(tmp_path)] == [3, 4]


def test_a_half_written_file_is_never_loaded_and_is_cleaned_up(tmp_path):
    model, opt = _model_and_opt()
    ckpt.save(1, model=model, optimizer=opt, directory=tmp_path)
    # what a writer killed mid-way leaves: a temporary name, never a ckpt-*.pt
    stale = tmp_path / ".ckpt-0000000002.pt.tmp-12345"
    stale.write_bytes(b"\x80\x04half")
    assert ckpt.load(model=model, directory=tmp_path).step == 1
    ckpt.save(2, model=model, optimizer=opt, directory=tmp_path)
    assert not stale.exists()
    assert ckpt.load(model=model, directory=tmp_path).step == 2


def test_loading_never_runs_code_from_the_file(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "ckpt-0000000007.pt").write_bytes(pickle.dumps({"format": 1, "x": Evil()}))
    with pytest.raises(ckpt.CheckpointError, match="cannot be read"):
        ckpt.load(directory=tmp_path)
    assert not marker.exists()


def test_a_write_that_fails_raises_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ckpt.CheckpointError, match="could not write checkpoint"):
        ckpt.save(0, model=_model_and_opt()[0], directory=blocker)
    with pytest.raises(ckpt.CheckpointError, match="step must be"):
        ckpt.save(-1, directory=tmp_path)


def test_default_dir_order(monkeypatch, tmp_path):
    for var in ("NBSCALE_CHECKPOINT_DIR", "SM_TRAINING_ENV", "NBSCALE_JOB_DIR"):
        monkeypatch.delenv(var, raising=False)
    if not os.path.isdir("/opt/ml"):
        with pytest.raises(ckpt.CheckpointError, match="not part of an nbscale job"):
            ckpt.default_dir()
        monkeypatch.setenv("NBSCALE_JOB_DIR", str(tmp_path / "job"))
        assert ckpt.default_dir() == tmp_path / "job" / "checkpoints"
    monkeypatch.setenv("SM_TRAINING_ENV", "{}")
    assert ckpt.default_dir() == ckpt.SAGEMAKER_DIR
    monkeypatch.setenv("NBSCALE_CHECKPOINT_DIR", str(tmp_path / "mine"))
    assert ckpt.default_dir() == tmp_path / "mine"


def test_a_checkpoint_dir_that_cannot_be_a_folder_is_refused_before_submission(write_script):
    from nbscale.errors import SpecError
    from nbscale.store import get_store
    from nbscale.store.jobs import list_jobs

    script = write_script("train.py", "print(1)\n")
    (script.parent / "taken").write_text("a file")
    with pytest.raises(SpecError, match="checkpoint_dir: .*taken is a file"):
        submit(JobSpec(Entry.from_path(str(script)), checkpoint_dir="taken/ckpts"))
    assert list_jobs(get_store())[1] == 0
