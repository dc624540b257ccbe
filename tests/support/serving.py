"""A packaged model and the serving runtime as a real process: what the serving tests share."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from nbscale.serving import package
from nbscale.serving.artifact import sign
from tests.support import wait_for
from tests.support.emulators import free_port

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

SLOW_PREDICT = """
_fast_predict_fn = predict_fn


def predict_fn(data, model):
    import time
    time.sleep(float(os.environ.get("NBSCALE_TEST_SLOW_S", "0.05")))
    return _fast_predict_fn(data, model)
"""

# a model that keeps its CPU busy (NBSCALE_TEST_BUSY_S seconds of work per call)
BUSY_PREDICT = """
_fast_predict_fn = predict_fn


def predict_fn(data, model):
    import time
    until = time.perf_counter() + float(os.environ.get("NBSCALE_TEST_BUSY_S", "0.02"))
    while time.perf_counter() < until:
        pass
    return _fast_predict_fn(data, model)
"""


def mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    ).eval()


def make_artifact(
    directory: Path, name: str = "digits", slow: bool = False, busy: bool = False
) -> tuple[Path, torch.nn.Module]:
    """A signed artifact of ``mlp()``; ``slow``: each call waits 50 ms; ``busy``: each call
    keeps its CPU busy for 20 ms."""
    model = mlp()
    out = package(model, directory, name)
    if slow or busy:
        code = out / "code" / "inference.py"
        code.write_text(code.read_text() + (SLOW_PREDICT if slow else BUSY_PREDICT))
        sign(out)  # an edited handler is refused until it is signed again
    return out, model


def deploy_elastic(directory: Path, name: str, replicas: tuple[int, int], **options):
    """An endpoint of a 50 ms model (``make_artifact(slow=True)``), one request per batch,
    scaling at one request in flight per replica and down after 1 s of lower demand: its
    replicas follow the number of clients. ``options``: the backend's (``direct``...).
    Returns the endpoint and the model."""
    from nbscale.endpoints import deploy

    model_dir, model = make_artifact(directory, name=name, slow=True)
    ep = deploy(
        str(model_dir),
        name=name,
        replicas=replicas,
        max_batch_size=1,
        target_concurrency=1,
        scale_down_delay_s=1,
        options=options or None,
    )
    return ep, model


def forward(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy()


class Server:
    def __init__(self, model_dir: Path, tmp: Path, *extra: str, env: dict | None = None):
        self.port = free_port()
        token_file = tmp / "token"
        token_file.write_text(TOKEN)
        self.log = tmp / f"server-{self.port}.log"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nbscale.serving",
                "--model-dir",
                str(model_dir),
                "--port",
                str(self.port),
                "--token-file",
                str(token_file),
                *extra,
            ],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def wait_ready(self) -> Server:
        def ready():
            assert self.proc.poll() is None, self.log.read_text()
            try:
                return self.request("GET", "/v2/health/ready")[0] == 200
            except OSError:
                return False

        wait_for(ready, 60, what="server ready")
        return self

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def infer_body(
    x: np.ndarray, name: str = "input", datatype: str = "FP32", rid: str | None = None
) -> bytes:
    req = {
        "inputs": [
            {
                "name": name,
                "shape": list(x.shape),
                "datatype": datatype,
                "data": x.reshape(-1).tolist(),
            }
        ]
    }
    if rid:
        req["id"] = rid
    return json.dumps(req).encode()


class Scaler:
    """An object with predict(), as a scikit-learn model would be."""

    def __init__(self, factor: float):
        self.factor = factor
        self.n_features_in_ = 4

    def predict(self, x):
        return np.asarray(x, dtype=np.float32) * self.factor


class ServerThread:
    """nbscale's HTTP server (``httpserver.serve``) with ``handler`` in an event loop of its
    own thread, in this process; ``serve_options`` go to ``serve`` (``sock``, ``busy_poll``)."""

    def __init__(self, handler, **serve_options):
        import asyncio
        import threading

        from nbscale.serving.httpserver import serve

        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def main():
            self.server = await serve(handler, "127.0.0.1", 0, **serve_options)
            started.set()

        self.thread = threading.Thread(
            target=lambda: (self.loop.run_until_complete(main()), self.loop.run_forever())
        )
        self.thread.start()
        assert started.wait(10)

    def call(self, coro, timeout: float = 5):
        """Run ``coro`` in the server's loop and return what it returns."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
