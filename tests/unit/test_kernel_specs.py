"""The kernelspec lookup before a kernel start looks in Jupyter's own kernel folders first
(jupyter_client's default list imports IPython to add IPython's folder), and still finds a
kernel only that default list has."""

from __future__ import annotations

import json

from nbscale import kernel_transport


def test_a_kernel_in_jupyters_folders_is_found_without_ipythons(tmp_path, monkeypatch):
    folder = tmp_path / "share" / "jupyter" / "kernels" / "mine"
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(
        json.dumps({"argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    "display_name": "mine", "language": "python"})
    )  # fmt: skip
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    specs = kernel_transport.spec_manager("mine")
    assert str(tmp_path) in specs.kernel_dirs[0]
    assert not any(".ipython" in d for d in specs.kernel_dirs)
    assert kernel_transport._speaks_ipc("mine", specs) is None


def test_a_kernel_only_the_default_list_has_gets_the_default_manager():
    specs = kernel_transport.spec_manager("no-such-kernel-anywhere")
    assert any(".ipython" in d for d in specs.kernel_dirs)  # IPython's folder is looked in too
