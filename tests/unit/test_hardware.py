"""nbscale.runtime.hardware: what a node checks before it starts its ranks (issue 19). The
GPU count is injected (``torch.cuda.device_count()`` is the truth on a real node; there is
no GPU here); the versions check reads a real signed bundle."""

from __future__ import annotations

import io
import json

import pytest

from nbscale import bundle
from nbscale.runtime.cell import KIND, VersionMismatch, check_versions, here_versions
from nbscale.runtime.hardware import HardwareError, check_gpus, check_node, sagemaker_network


def test_fewer_gpus_than_asked_fails_naming_both_numbers():
    with pytest.raises(HardwareError) as err:
        check_gpus(8, 1, device_count=lambda: 4)
    assert str(err.value).startswith(
        "this node has 4 GPUs but the job asks for 8 (8 processes x 1 GPU)"
    )
    with pytest.raises(HardwareError, match="has 0 GPUs but the job asks for 2"):
        check_gpus(1, 2, device_count=lambda: 0)


def test_more_gpus_than_used_is_a_warning_and_the_exact_count_is_quiet():
    out = io.StringIO()
    assert check_gpus(2, 1, device_count=lambda: 8, out=out) == 8
    assert out.getvalue() == (
        "nbscale: warning: this node has 8 GPUs and the job uses 2 "
        "(2 processes x 1 GPU); the rest stay idle\n"
    )
    quiet = io.StringIO()
    assert check_gpus(4, 2, device_count=lambda: 8, out=quiet) == 8
    assert quiet.getvalue() == ""


def test_the_sagemaker_network_interface_goes_to_nccl(tmp_path):
    conf = tmp_path / "resourceconfig.json"
    conf.write_text(
        json.dumps(
            {
                "current_host": "algo-1",
                "hosts": ["algo-1"],
                "current_instance_type": "ml.p4d.24xlarge",
                "network_interface_name": "ethwe",
            }
        )
    )
    env: dict[str, str] = {}
    assert sagemaker_network(env, str(conf)) == {"NCCL_SOCKET_IFNAME": "ethwe"}
    assert env == {"NCCL_SOCKET_IFNAME": "ethwe"}
    mine = {"NCCL_SOCKET_IFNAME": "eth1"}  # the user's --env wins
    assert sagemaker_network(mine, str(conf)) == {} and mine == {"NCCL_SOCKET_IFNAME": "eth1"}
    # check_node sets it on SageMaker only, from NBSCALE_SM_RESOURCE_CONFIG's file
    spec = {"entry": {"kind": "module", "target": "m"}, "gpus_per_proc": 1}
    env = {"NBSCALE_SM_RESOURCE_CONFIG": str(conf)}
    check_node(spec, {"platform": "sagemaker", "nproc": 8}, lambda: 8, env)
    assert env["NCCL_SOCKET_IFNAME"] == "ethwe"
    env = {"NBSCALE_SM_RESOURCE_CONFIG": str(conf)}
    check_node(spec, {"platform": "kubeflow", "nproc": 8}, lambda: 8, env)
    assert "NCCL_SOCKET_IFNAME" not in env
    with pytest.raises(HardwareError, match="this node has 1 GPU but the job asks for 8"):
        check_node(spec, {"platform": "sagemaker", "nproc": 8}, lambda: 1, {})


def _bundle(tmp_path, versions: dict[str, str]):
    return bundle.write(
        tmp_path / "cell.zip",
        {"kind": KIND, "versions": versions, "inputs": [], "imports": []},
        {"cell.py": b"x = 1\n"},
    )


def test_a_bundle_from_another_python_or_torch_is_refused_in_one_line(tmp_path):
    here = here_versions()
    other = {"python": "3.9.18", "torch": "2.1.2", "cloudpickle": "3.0.0"}
    with pytest.raises(VersionMismatch) as err:
        check_versions({"versions": other}, here)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(
        f"the cell was captured with Python 3.9.18 and torch 2.1.2 but this container has "
        f"Python {here['python']} and torch {here['torch']}"
    )
    # only the side that differs is named; a patch release is not a difference
    torch_only = {"python": here["python"].rsplit(".", 1)[0] + ".99", "torch": "1.13.1"}
    with pytest.raises(VersionMismatch, match=r"^the cell was captured with torch 1\.13\.1 but"):
        check_versions({"versions": torch_only}, here)
    check_versions({"versions": {**here, "torch": here["torch"].split("+")[0] + "+cu124"}}, here)
    check_versions({"versions": {"python": here["python"], "torch": "none"}}, here)
    # the launcher's check reads the signed manifest, before any rank unpickles anything
    path = _bundle(tmp_path, other)
    layout = {"platform": "kubeflow", "nproc": 1}
    with pytest.raises(VersionMismatch, match="captured with Python 3.9.18"):
        check_node({"entry": {"kind": "bundle", "target": str(path)}}, layout, lambda: 0, {})
    same = _bundle(tmp_path, here)
    check_node({"entry": {"kind": "bundle", "target": str(same)}}, layout, lambda: 0, {})


def test_the_manifest_check_trusts_only_a_signed_manifest(tmp_path):
    """The launcher's version check reads the manifest without the parts, but only signed:
    a manifest edited to claim the container's versions is refused."""
    import zipfile

    from nbscale.errors import SignatureError
    from nbscale.runtime.hardware import signed_manifest

    path = _bundle(tmp_path, {"python": "3.9.18", "torch": "2.1.2"})
    assert signed_manifest(str(path))["versions"]["torch"] == "2.1.2"
    with zipfile.ZipFile(path) as zf:
        items = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(items["manifest.json"])
    manifest["versions"] = here_versions()
    items["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    forged = tmp_path / "forged.zip"
    with zipfile.ZipFile(forged, "w") as zf:
        for name, data in items.items():
            zf.writestr(name, data)
    with pytest.raises(SignatureError, match="signature does not match"):
        signed_manifest(str(forged))
