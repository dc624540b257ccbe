"""Defects of issue 14 in specs and config, checked in-process: each test failed before its fix."""

from __future__ import annotations

import json

import pytest

from nbscale.errors import SpecError
from nbscale.specs import MAX_RESOURCES, Entry, JobSpec


@pytest.mark.parametrize("field", sorted(MAX_RESOURCES))
def test_every_resource_field_has_an_upper_bound(field, write_script):
    script = write_script("tiny.py", "print('hi')\n")
    top = MAX_RESOURCES[field]
    JobSpec(Entry.from_path(str(script)), **{field: top})  # the bound itself is fine
    with pytest.raises(SpecError, match=f"^{field}: must be at most {top}, got {top + 1} "):
        JobSpec(Entry.from_path(str(script)), **{field: top + 1})


def test_config_says_when_a_backend_type_is_not_installed(nbscale_home, monkeypatch, capsys):
    from importlib.metadata import EntryPoint

    from nbscale import backends
    from nbscale.cli import main

    nbscale_home.mkdir(parents=True, exist_ok=True)
    (nbscale_home / "config.toml").write_text(
        '[backends.prod]\ntype = "sagemaker"\nregion = "eu-west-1"\n'
        '[backends.kf]\ntype = "kubeflow"\n'
    )
    local = EntryPoint("local", "nbscale.backends.local:PLATFORM", "nbscale.platforms")
    # kubeflow's entry point is there but its module is not importable (its SDK missing);
    # sagemaker's is not installed at all
    broken = EntryPoint("kubeflow", "nbscale_no_such_sdk.backend:PLATFORM", "nbscale.platforms")
    monkeypatch.setattr(backends, "backend_types", lambda: {"local": local, "kubeflow": broken})
    assert main(["config"]) == 0
    out, err = capsys.readouterr()
    assert "backend 'prod' has type 'sagemaker', which is not installed" in err
    assert "installed types: kubeflow, local" in err
    assert "backend 'kf' has type 'kubeflow', which cannot be loaded" in err
    assert "pip install 'nbscale[kubeflow]'" in err
    assert "# warning: backend 'prod' has type 'sagemaker'" in out
    assert main(["config", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["warnings"]) == 2
    monkeypatch.setattr(backends, "backend_types", lambda: {"local": local})
    (nbscale_home / "config.toml").write_text('[backends.box]\ntype = "local"\n')
    assert main(["config"]) == 0
    out, err = capsys.readouterr()
    assert "warning" not in out + err


def test_a_bad_secret_env_name_is_one_error(write_script):
    script = write_script("tiny.py", "print('hi')\n")
    with pytest.raises(SpecError, match="secret_env: 'A-B' is not a valid variable name"):
        JobSpec(Entry.from_path(str(script)), secret_env=("A-B",))
