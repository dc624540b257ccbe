"""R8: a job spec keeps secret env values out of its dict and repr (what is stored and shown of
real jobs: tests/integration/reliability/test_r8_secrets.py)."""

from __future__ import annotations

import json

import pytest

from nbscale.errors import SpecError
from nbscale.specs import Entry, JobSpec

TOKEN = "tok-" + "7f3a9c1e5b" * 3


PASSWORD = "pw-" + "c0ffee1234" * 3


def test_jobspec_keeps_secret_values_out_of_its_dict_and_repr(write_script, monkeypatch):
    script = write_script("tiny.py", "print('hi')\n")
    monkeypatch.setenv("HF_TOKEN", PASSWORD)
    spec = JobSpec(
        Entry.from_path(str(script)), env={"MY_API_TOKEN": TOKEN}, secret_env=("HF_TOKEN",)
    )
    assert spec.secret_values == {"MY_API_TOKEN": TOKEN, "HF_TOKEN": PASSWORD}
    text = json.dumps(spec.to_dict()) + repr(spec)
    assert TOKEN not in text and PASSWORD not in text
    # a re-run reads every secret from the environment it is submitted from
    with pytest.raises(SpecError, match="MY_API_TOKEN is not set in this environment"):
        JobSpec.from_dict(spec.to_dict())
    monkeypatch.setenv("MY_API_TOKEN", "other")
    again = JobSpec.from_dict(spec.to_dict())
    assert again.secret_values == {"HF_TOKEN": PASSWORD, "MY_API_TOKEN": "other"}
    assert again.secret_env == ("HF_TOKEN", "MY_API_TOKEN")
