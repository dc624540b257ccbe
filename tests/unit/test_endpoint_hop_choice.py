"""Whether a local endpoint's replicas serve its socket themselves (``direct``, the default) or
the router proxies them (``--proxy``): what each face passes, and what the backend decides."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest

from nbscale.backends.endpoint_base import DeployRequest, EndpointBackend
from nbscale.backends.local.endpoints import LocalEndpoints
from nbscale.backends.local.hop import DIRECT_ENV
from nbscale.errors import SpecError
from nbscale.faces.options import add_platform_options, platform_options


def _parse(*argv: str) -> dict:
    p = argparse.ArgumentParser(prog="deploy")
    add_platform_options(p)
    return platform_options(p.parse_args(list(argv)))


def test_the_faces_pass_direct_or_proxy_only_when_asked(capsys):
    # Given the flags of `nbscale deploy` and `%deploy`
    # Then neither flag passes nothing (the backend's default), and each passes its choice
    assert "direct" not in _parse()
    assert _parse("--direct") == {"direct": True}
    assert _parse("--proxy") == {"direct": False}
    # And both at once are refused by the parser, naming the two
    with pytest.raises(SystemExit) as exc:
        _parse("--direct", "--proxy")
    assert exc.value.code == 2
    assert "--proxy: not allowed with argument --direct" in capsys.readouterr().err


def _request(options: dict) -> DeployRequest:
    return DeployRequest("hop", "/no/artifact/needed", 2, 2, None, {}, options)


@pytest.mark.parametrize(
    ("options", "env", "direct"),
    [
        ({}, None, True),  # the default: every replica serves the socket
        ({"direct": True}, None, True),
        ({"direct": False}, None, False),  # --proxy
        ({}, "0", False),  # NBSCALE_DIRECT=0: the router proxies every request
        ({"direct": False}, "0", False),
        ({}, "1", True),
    ],
)
def test_the_backend_serves_directly_unless_asked_not_to(monkeypatch, options, env, direct):
    if env is None:
        monkeypatch.delenv(DIRECT_ENV, raising=False)
    else:
        monkeypatch.setenv(DIRECT_ENV, env)
    assert LocalEndpoints._direct(_request(options)) is direct


@pytest.mark.parametrize(
    ("options", "env", "says"),
    [
        ({"direct": True}, "0", f"{DIRECT_ENV}=0 in this environment"),
        ({"direct": "yes"}, None, "must be true or false, got 'yes'"),
    ],
)
def test_a_choice_that_cannot_be_kept_is_refused(monkeypatch, options, env, says):
    if env is None:
        monkeypatch.delenv(DIRECT_ENV, raising=False)
    else:
        monkeypatch.setenv(DIRECT_ENV, env)
    with pytest.raises(SpecError, match=says) as err:
        LocalEndpoints._direct(_request(options))
    assert err.value.field == "direct"


@pytest.mark.parametrize(
    ("options", "flag"), [({"direct": True}, "direct"), ({"direct": False}, "proxy")]
)
def test_a_backend_without_the_choice_refuses_either_flag_by_its_name(options, flag):
    # Given a backend with no local hop to choose (as the Kubeflow and SageMaker ones)
    cloud = SimpleNamespace(type="kubeflow", options=frozenset({"gpus"}))
    # When --direct or --proxy is asked of it, Then it is refused under that flag's own name
    with pytest.raises(SpecError, match="the kubeflow endpoint backend does not use it") as err:
        EndpointBackend.validate(cloud, _request(options))
    assert err.value.field == flag
    assert f"drop --{flag}" in str(err.value)
    # And an option it has, or one left unset, passes
    EndpointBackend.validate(cloud, _request({"gpus": 1, "canary_traffic_percent": None}))


def test_a_refused_choice_leaves_no_folder_of_the_endpoint(nbscale_home):
    # Given a model in the notebook, packaged by deploy before the backend sees its options
    import torch

    from nbscale.endpoints import deploy, endpoints

    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    # When the backend refuses the deploy's choice of hop
    with pytest.raises(SpecError, match="must be true or false"):
        deploy(model, name="refused", options={"direct": "yes"}, example=torch.zeros(1, 4))
    # Then nothing of it is left: no record, no packaged model, no empty folder
    assert endpoints() == []
    assert not (nbscale_home / "endpoints" / "refused").exists()
