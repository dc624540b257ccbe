"""``%pipeline`` in a real IPython kernel: run (default: the kernel's own notebook), compile, errors."""

from __future__ import annotations

import os

import pytest

from nbscale.pipelines import runs
from tests.support.pipeline_notebooks import cell, write_notebook

pytestmark = pytest.mark.timeout(240)


class Kernel:
    def __init__(self, cwd, **env):
        from jupyter_client.manager import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(cwd), env={**os.environ, **env})
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str) -> tuple[str, str]:
        out: list[str] = []

        def hook(msg):
            content = msg["content"]
            if msg["msg_type"] == "stream":
                out.append(content["text"])
            elif msg["msg_type"] in ("execute_result", "display_data", "update_display_data"):
                out.append(content["data"].get("text/plain", ""))
            elif msg["msg_type"] == "error":
                out.append("\n".join(content["traceback"]))

        reply = self.kc.execute_interactive(code, output_hook=hook, timeout=180)
        return reply["content"]["status"], "\n".join(out)

    def close(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture
def kernel_for(tmp_path):
    made = []

    def start(**env):
        made.append(Kernel(tmp_path, **env))
        return made[-1]

    yield start
    for k in made:
        k.close()


def test_pipeline_magic_runs_this_notebook_compiles_and_reports_errors(tmp_path, kernel_for):
    path = write_notebook(
        tmp_path / "flow.ipynb",
        [
            cell("n = 3", "pipeline-parameters"),
            cell("xs = list(range(n))", "step:make"),
            cell("print('total', sum(xs))", "step:use", "prev:make"),
        ],
    )
    kernel = kernel_for(JPY_SESSION_NAME=str(path))
    status, text = kernel.run("%load_ext nbscale")
    assert status == "ok", text

    status, text = kernel.run("%pipeline run -p n 5")
    assert status == "ok", text
    assert "SUCCEEDED" in text and "make" in text and "use" in text
    (run,) = runs()
    assert run.status == "SUCCEEDED" and run.parameters["n"] == 5 and run.source == str(path)

    status, text = kernel.run(
        f"%pipeline compile {path} --target kfp -o {tmp_path / 'flow.kfp.yaml'}"
    )
    assert status == "ok" and (tmp_path / "flow.kfp.yaml").exists(), text

    status, text = kernel.run("%pipeline run -p n many")
    assert status == "error" and "parameter n: expects int, got 'many'" in text
    assert "Traceback" not in text  # one clear message, not the magic's internals
    status, text = kernel.run("%pipeline launch")
    assert status == "error" and "invalid choice" in text


def test_pipeline_magic_without_a_path_outside_a_notebook_says_what_to_give(tmp_path, kernel_for):
    kernel = kernel_for(JPY_SESSION_NAME="")
    kernel.run("%load_ext nbscale")
    status, text = kernel.run("%pipeline run")
    assert status == "error" and "does not know its notebook's path" in text
