"""Serving benchmark: the same small torch MLP behind nbscale, a bare Starlette+uvicorn app, KServe and MLServer.

    python benchmarks/bench_serving.py            # sets up the peers' venvs on first run
    python benchmarks/bench_serving.py --device cuda   # nbscale rows on a GPU, where there is one

Each peer lives in its own venv under benchmarks/.venvs, created here with
``--system-site-packages`` so the installed CPU torch is reused: the peer is
installed with ``torch==2.13.0`` pinned on the same pip line, which that torch
already satisfies, so pip never fetches another (CUDA) build. The bare app
is Starlette on uvicorn with uvloop and httptools: the floor any Python
server of this model should be measured against. It is run in two variants,
from the same venv: ``bare-numpy`` parses the input through numpy and
answers ``y.ravel().tolist()`` of a numpy array; ``bare-torch`` builds the
input with ``torch.tensor(list)`` under ``torch.no_grad()`` and answers
``y.flatten().tolist()``. At every connection count the ratios are taken
against whichever of the two served more requests/s at that count (named in
``bare_reference``), so the baseline is the fastest reasonable bare app.

Every server gets one process pinned to CPU 0 (taskset; the deployed
endpoint's router and replica share it), OMP_NUM_THREADS=1, the same V2
JSON request (one row of 64 FP32) and the same load generator, wrk (C, one
thread, closed loop) pinned to CPU 1, at 1, 10, 32 and 64 connections.
wrk corrects its latency for coordinated omission (``stats_correct``): a
request slower than a connection's mean interval is counted again at each
interval, so a few very slow requests, such as the first ones of 64
connections accepted one loop turn at a time (issue 23), move its p99 far
more than their number. Reported per server: requests/s and p50/p99 at each level, the ratios to
the faster bare app (requests/s and p99) and to the best peer (KServe or MLServer) at each level, and p50
overhead at one connection over the bare forward pass of the same model.
Then, for a deployed endpoint: the first request's latency when scaled to
zero (woken standby, and a fresh start), and how long a SIGKILLed router
takes to answer again (``cold-start``); and a replica started from nothing,
forked from the router's zygote and, interleaved with it, as a new Python
process (``NBSCALE_ZYGOTE=0``): first deploy, a replica SIGKILLed, a scale-up,
and the first request to an endpoint scaled to zero whose standby is gone
(``fresh-replica``); and a new ``python -m nbscale.serving`` process until ready, of the
artifact with its lean form and without it (``load-form``). ``nbscale-endpoint`` is an endpoint of one replica, which
serves the endpoint's socket itself; ``nbscale-endpoint-proxy`` is the same
endpoint with ``NBSCALE_DIRECT=0``, every request through the router;
``nbscale-endpoint-2`` is fixed at two replicas, both of which accept on the
endpoint's socket themselves (``direct``, the default); ``nbscale-endpoint-2-proxy``
is the same deployed with ``--proxy``: the router proxies to them (and retries a
request that hit a dead replica). ``nbscale-endpoint-autoscale`` scales between 1 and 4
replicas (default target of 4 requests in flight each), every one serving the socket
(each point records the replicas and who served the socket when it ended). Its router adds a
replica for load only while the endpoint leaves half a CPU free among those it
may run on (``nbscale.backends.local.cpu_room``): pinned to one CPU, it stays
at one replica once that replica fills the CPU. Each of its points
starts from one replica, as after an idle spell (``replicas_before_settling``
says how many the last point left; without this, c=1 would be measured on the
replicas c=64 left, which scale down one per ``scale_down_delay_s``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import save  # noqa: E402

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
PEERS = {
    "kserve": ["kserve==0.21.0"],
    "mlserver": ["mlserver==1.7.1"],
    "bare": ["starlette==1.10.0", "uvicorn[standard]==0.54.0"],
}
IMPORTS = {
    "kserve": "kserve",
    "mlserver": "mlserver",
    "bare": "uvicorn, starlette, uvloop, httptools",
}
SERVER_CPU, LOAD_CPU = "0", "1"
P99_LIMIT_MS = 50.0
PIN_SERVER: list[str] = []  # taskset prefixes, set in main()
PIN_LOAD: list[str] = []
TOKEN = "bench-token"

MODEL_SRC = """
import torch


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))

    def forward(self, x):
        return self.net(x)


def load(path):
    torch.set_num_threads(1)
    model = MLP()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()
"""

KSERVE_SRC = """
import sys

import torch
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

from mlp import load


class MLPModel(Model):
    def __init__(self, name, weights):
        super().__init__(name)
        self.net = load(weights)
        self.ready = True

    def predict(self, payload: InferRequest, headers=None):
        x = torch.from_numpy(payload.inputs[0].as_numpy())
        with torch.inference_mode():
            y = self.net(x).numpy()
        out = InferOutput(name="output", shape=list(y.shape), datatype="FP32")
        out.set_data_from_numpy(y, binary_data=False)
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=[out])


if __name__ == "__main__":
    ModelServer(http_port=int(sys.argv[1]), grpc_port=int(sys.argv[2]), enable_grpc=False, workers=1,
                enable_latency_logging=False).start([MLPModel("mlp", sys.argv[3])])
"""

BARE_SRC = """  # bare-numpy
import json
import sys

import numpy as np
import torch
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mlp import load

net = load(sys.argv[2])


async def infer(request):
    req = await request.json()
    inp = req["inputs"][0]
    x = torch.from_numpy(np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"]))
    with torch.inference_mode():
        y = net(x).numpy()
    out = {"name": "output", "datatype": "FP32", "shape": list(y.shape), "data": y.ravel().tolist()}
    return JSONResponse({"model_name": "mlp", "id": req.get("id"), "outputs": [out]})


async def ready(request):
    return Response(b"")


app = Starlette(routes=[Route("/v2/models/mlp/infer", infer, methods=["POST"]), Route("/v2/health/ready", ready)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
                access_log=False, log_level="warning")
"""

BARE_TORCH_SRC = """  # bare-torch: no numpy on the request path
import sys

import torch
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mlp import load

net = load(sys.argv[2])


async def infer(request):
    req = await request.json()
    inp = req["inputs"][0]
    with torch.no_grad():
        x = torch.tensor(inp["data"], dtype=torch.float32).reshape(inp["shape"])
        y = net(x)
    out = {"name": "output", "datatype": "FP32", "shape": list(y.shape), "data": y.flatten().tolist()}
    return JSONResponse({"model_name": "mlp", "id": req.get("id"), "outputs": [out]})


async def ready(request):
    return Response(b"")


app = Starlette(routes=[Route("/v2/models/mlp/infer", infer, methods=["POST"]), Route("/v2/health/ready", ready)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
                access_log=False, log_level="warning")
"""

# the bare app's variants: the fastest one at each connection count is the baseline
BARE_VARIANTS = {"bare-numpy": "bare_numpy_mlp.py", "bare-torch": "bare_torch_mlp.py"}
P99_GOAL_X = 1.5  # p99 no worse than this many times the faster bare app's
NOBATCH_GOAL_X = 1.0  # the runtime with batching off, requests/s against the faster bare app
ENDPOINT_GOAL_X = 0.9  # the deployed endpoint, requests/s against the faster bare app

MLSERVER_SRC = """
import os

import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from mlp import load


class MLPRuntime(MLModel):
    async def load(self):
        self.net = load(os.environ["BENCH_WEIGHTS"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = torch.from_numpy(NumpyCodec.decode_input(payload.inputs[0]))
        with torch.inference_mode():
            y = self.net(x).numpy()
        return InferenceResponse(model_name=self.name, id=payload.id,
                                 outputs=[NumpyCodec.encode_output("output", y)])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_venvs(names: set[str]) -> dict[str, Path]:
    pythons = {}
    for name, pkgs in PEERS.items():
        if name not in names:
            continue
        venv = VENVS / name
        py = venv / "bin" / "python"
        if not py.exists():
            subprocess.run(
                [sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True
            )
        check = subprocess.run([str(py), "-c", f"import {IMPORTS[name]}"], capture_output=True)
        if check.returncode != 0:
            print(f"installing {' '.join(pkgs)} into {venv}", file=sys.stderr)
            subprocess.run(
                [str(py), "-m", "pip", "install", "-q", *pkgs, "torch==2.13.0"], check=True
            )
        pythons[name] = py
    return pythons


def wait_http(url: str, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode} before {url} answered:\n{_tail(proc)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def _tail(proc: subprocess.Popen) -> str:
    path = getattr(proc, "log_path", None)
    return path.read_text(errors="replace")[-3000:] if path else ""


def check_prediction(url: str, body: bytes, expected: np.ndarray) -> None:
    req = urllib.request.Request(
        url, body, {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        out = json.loads(resp.read())["outputs"][0]
    got = np.asarray(out["data"], np.float32).reshape(out["shape"])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, script: Path, connections: int, seconds: float) -> dict:
    out = subprocess.run(
        [
            *PIN_LOAD,
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lat = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)$", out, re.M))
    errors = 0
    for pattern in (
        r"Non-2xx or 3xx responses: (\d+)",
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
    ):
        m = re.search(pattern, out)
        if m:
            errors += sum(int(g) for g in m.groups())
    return {
        "connections": connections,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        # wrk prints no latency distribution when no request completed
        "p50_ms": _ms(lat["50"]) if "50" in lat else float("inf"),
        "p99_ms": _ms(lat["99"]) if "99" in lat else float("inf"),
        "errors": errors,
    }


def bare_forward_ms(weights: Path, device: str) -> float:
    ns: dict = {}
    exec(MODEL_SRC, ns)  # the very module the peers import
    model = ns["load"](str(weights)).to(device)
    x = torch.rand(1, 64, device=device)
    times = []
    with torch.inference_mode():
        for i in range(3000):
            t = time.perf_counter()
            model(x).cpu()
            if i >= 500:
                times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def server_cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by these processes and all their children."""
    import psutil

    procs: dict[int, psutil.Process] = {}  # each once: a replica is also the router's child
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                procs[proc.pid] = proc
        except psutil.NoSuchProcess:
            continue
    total = 0.0
    for proc in procs.values():
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def measure(
    targets: dict[str, tuple[str, Path]],
    sweep: list[int],
    seconds: int,
    rounds: int,
    pids: dict[str, list[int]] | None = None,
    observe: dict | None = None,
    settle: dict | None = None,
) -> dict:
    """Every server at every connection count, interleaved, ``rounds`` times; the median round counts.

    Interleaving (A, B, C at c=1, then A, B, C at c=2, ...) spreads the noise of
    other work on this shared machine over all servers alike.
    """
    for url, script in targets.values():
        wrk(url, script, 4, 1)  # warm-up
    runs: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in sweep} for name in targets}
    loads = []
    for r in range(rounds):
        loads.append([round(v, 2) for v in os.getloadavg()])
        for c in sweep:
            for name, (url, script) in targets.items():
                settled = settle[name]() if settle and name in settle else None
                cpu = server_cpu_s((pids or {}).get(name, []))
                point = wrk(url, script, c, seconds)
                # the server's own CPU time per answered request: what the code costs,
                # much less moved by other work on the machine than requests per second
                used = server_cpu_s((pids or {}).get(name, [])) - cpu
                point["server_cpu_us_per_request"] = (
                    round(used / point["requests"] * 1e6, 1) if point["requests"] else None
                )
                if observe and name in observe:
                    point.update(observe[name]())
                if settled is not None:
                    point["replicas_before_settling"] = settled
                runs[name][c].append(point)
                print(
                    f"  round {r + 1} {name:18} c={c:3} {point['rps']:9.0f} rps  p50 {point['p50_ms']:7.3f} ms  "
                    f"p99 {point['p99_ms']:7.2f} ms  cpu/req {point['server_cpu_us_per_request']} us  "
                    f"errors {point['errors']}",
                    file=sys.stderr,
                )
    out = {}
    for name in targets:
        points = []
        for c in sweep:
            ordered = sorted(runs[name][c], key=lambda p: p["rps"])
            median = dict(ordered[len(ordered) // 2])
            median["rounds_rps"] = [p["rps"] for p in runs[name][c]]
            median["rounds_p50_ms"] = [p["p50_ms"] for p in runs[name][c]]
            median["rounds_p99_ms"] = [p["p99_ms"] for p in runs[name][c]]
            cpus = sorted(
                p["server_cpu_us_per_request"]
                for p in runs[name][c]
                if p["server_cpu_us_per_request"] is not None
            )
            median["server_cpu_us_per_request"] = cpus[len(cpus) // 2] if cpus else None
            median["rounds_server_cpu_us_per_request"] = cpus
            points.append(median)
        ok = [p for p in points if p["p99_ms"] <= P99_LIMIT_MS and p["errors"] == 0]
        best = max(ok, key=lambda p: p["rps"]) if ok else None
        out[name] = {
            "sweep": points,
            "rps_by_connections": {str(p["connections"]): p["rps"] for p in points},
            "rps_at_p99_50ms": best["rps"] if best else 0.0,
            "best_connections": best["connections"] if best else None,
            "p50_ms_at_1_connection": points[0]["p50_ms"],
        }
    loads.append([round(v, 2) for v in os.getloadavg()])
    return out, loads


def bare_reference(results: dict, sweep: list[int]) -> dict[str, str]:
    """At each connection count, the bare variant that served more requests/s."""
    bares = [n for n in BARE_VARIANTS if n in results]
    return {
        str(c): max(bares, key=lambda n: results[n]["rps_by_connections"][str(c)])
        for c in sweep
        if bares
    }


def _post(url: str, body: bytes, token: str) -> int:
    req = urllib.request.Request(
        url, body, {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=180) as resp:
        resp.read()
        return resp.status


def cold_starts(artifact: Path, body: str, rounds: int) -> dict:
    """First-request latency of a scaled-to-zero endpoint, and the router's recovery from SIGKILL."""
    from nbscale.endpoints import deploy

    ep = deploy(str(artifact), name="mlp-cold", replicas=(0, 1), idle_timeout_s=1)
    try:
        token = (Path(os.environ["NBSCALE_HOME"]) / "endpoints" / "mlp-cold" / "token").read_text()
        url = f"{ep.url}/v2/models/mlp-cold/infer"

        def scaled_to_zero() -> dict:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                m = ep.metrics()
                if m["replicas"]["current"] == 0 and m["replicas"]["standby"] == 1:
                    return m
                time.sleep(0.2)
            raise RuntimeError("the endpoint did not scale to zero")

        def first_request() -> float:
            t = time.perf_counter()
            status = _post(url, body.encode(), token.strip())
            if status != 200:
                raise RuntimeError(f"the first request got {status}")
            return time.perf_counter() - t

        woken = []
        for _ in range(rounds):
            scaled_to_zero()
            woken.append(first_request())
        fresh = []
        for _ in range(min(rounds, 3)):  # no standby: it is killed, so a replica has to start
            m = scaled_to_zero()
            pid = next(r["pid"] for r in m["replica_list"] if r["state"] == "paused")
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
            fresh.append(first_request())
        recover = []
        for _ in range(3):
            router = ep.metrics()["router_pid"]
            os.kill(router, signal.SIGKILL)
            t = time.perf_counter()
            while True:
                try:
                    if _post(url, body.encode(), token.strip()) == 200:
                        break
                except OSError:
                    time.sleep(0.01)
            recover.append(time.perf_counter() - t)
            time.sleep(1)
        recorded = ep.metrics()["cold_starts"]
    finally:
        ep.delete()
    return {
        "woken_standby_s": [round(x, 4) for x in woken],
        "woken_standby_median_s": round(float(np.median(woken)), 4),
        "fresh_start_s": [round(x, 3) for x in fresh],
        "fresh_start_median_s": round(float(np.median(fresh)), 3),
        "router_sigkill_to_answer_s": [round(x, 3) for x in recover],
        "router_sigkill_to_answer_median_s": round(float(np.median(recover)), 3),
        "router_recorded_cold_starts": recorded,
    }


def _wait_ready_replicas(ep, n: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ep.metrics()["replicas"]["ready"] >= n:
            return
        time.sleep(0.005)
    raise RuntimeError(f"{n} replicas were not ready within {timeout} s")


FIRST_DEPLOY = """
import json, sys, time, urllib.request
from nbscale.endpoints import deploy, prewarm
prewarm()  # what %load_ext nbscale does as a session begins (a no-op once one is warm)
art, name, body = sys.argv[1], sys.argv[2], sys.argv[3].encode()
t = time.perf_counter()
ep = deploy(art, name=name, replicas=(1, 1))
token = open(f"{ep.record.config['dir']}/token").read().strip()
req = urllib.request.Request(f"{ep.url}/v2/models/{name}/infer", body,
    {"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
with urllib.request.urlopen(req, timeout=180) as resp:
    resp.read()
print(json.dumps(round(time.perf_counter() - t, 3)))
"""


def _first_deploy(artifact: Path, name: str, data: bytes, env: dict[str, str]) -> float:
    """A first deploy in a new Python process: ``deploy()`` until the first answer."""
    done = subprocess.run(
        [sys.executable, "-c", FIRST_DEPLOY, str(artifact), name, data.decode()],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


IMPORT_TORCH = "import torch, sys; sys.stdout.write('imported'); sys.stdout.flush()"


def _python_and_torch_s() -> float:
    """The floor of a deploy with nothing running: a new Python process until it has imported
    torch (what the warm zygote must do before it can fork a replica), its exit not counted."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", IMPORT_TORCH], stdout=subprocess.PIPE)
    said = proc.stdout.read(len("imported"))
    took = time.perf_counter() - t
    proc.wait(60)
    if said != b"imported":
        raise RuntimeError("python -c 'import torch' failed")
    return round(took, 3)


def _stop_warm(run_dir: Path, timeout: float = 30.0) -> None:
    """Stop this home's warm zygote (as its idle TTL would), so the next deploy finds none."""
    from nbscale.serving.zygote import warm_running

    subprocess.run(["pkill", "-TERM", "-f", f"nbscale.serving.zygote --warm {run_dir} "])
    deadline = time.monotonic() + timeout
    while warm_running(run_dir):
        if time.monotonic() > deadline:
            raise RuntimeError("the warm zygote did not stop")
        time.sleep(0.05)


def _wait_warm(run_dir: Path, timeout: float = 120.0) -> None:
    """Until the warm zygote has imported everything, what torch.export.load needs included
    (as long after ``%load_ext nbscale`` as a user's first deploy comes)."""
    from nbscale.serving.zygote import LAZY_DONE, start_warm, warm_paths

    start_warm(run_dir)
    sock, _ = warm_paths(run_dir)
    deadline = time.monotonic() + timeout
    log = run_dir / "zygote.log"
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if sock.exists() and LAZY_DONE in text.rsplit("nbscale warm zygote ", 1)[-1]:
            return
        time.sleep(0.05)
    raise RuntimeError("the warm zygote did not preload")


def _ready_s(artifact: Path, token_file: Path, pin: list[str]) -> tuple[float, str]:
    """A new ``python -m nbscale.serving`` of ``artifact``: seconds until ready, its ready line."""
    port = free_port()
    log = artifact.parent / f"{artifact.name}-{port}.log"
    t = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*pin, sys.executable, "-m", "nbscale.serving", "--model-dir", str(artifact)]
            + ["--port", str(port), "--token-file", str(token_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready", proc=proc)
        took = time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait(30)
    ready = [line for line in log.read_text().splitlines() if line.startswith("ready after")]
    return took, ready[-1] if ready else ""


def package_cost(model, rounds: int) -> dict:
    """What writing the lean form adds to ``package`` (in this process, torch.export warm):
    the same model packaged with it and without it, interleaved."""
    from nbscale.serving import artifact as art

    out: dict[str, list] = {"with_lean_form_s": [], "without_s": []}
    where = Path(tempfile.mkdtemp(prefix="bench-package-"))
    keep = art._lean_form
    try:
        art.package(model, where / "warm", "mlp")  # the first export of a process is slower
        for r in range(rounds):
            for key, writer in (("with_lean_form_s", keep), ("without_s", lambda tmp, x: None)):
                art._lean_form = writer
                t = time.perf_counter()
                art.package(model, where / f"{key}-{r}", "mlp")
                out[key].append(round(time.perf_counter() - t, 3))
    finally:
        art._lean_form = keep
        shutil.rmtree(where, ignore_errors=True)
    for key in ("with_lean_form_s", "without_s"):
        out[key.replace("_s", "_median_s")] = round(float(np.median(out[key])), 3)
    return out


def load_forms(artifact: Path, token_file: Path, rounds: int) -> dict:
    """A replica started as a new Python process (a GPU replica, NBSCALE_ZYGOTE=0, a KServe or
    SageMaker container): the artifact with its lean form against the same artifact without
    it (loaded by torch.export.load), interleaved, from the start until ready."""
    from nbscale.serving.artifact import sign
    from nbscale.serving.exported import LEAN_CODE, LEAN_TENSORS, MANIFEST_KEY

    plain = artifact.parent / "artifact-no-lean-form"
    shutil.copytree(artifact, plain)
    for name in (LEAN_CODE, LEAN_TENSORS):
        (plain / name).unlink()
    manifest = json.loads((plain / "nbscale.json").read_text())
    manifest.pop(MANIFEST_KEY)
    (plain / "nbscale.json").write_text(json.dumps(manifest, indent=2))
    sign(plain)
    out: dict[str, list] = {"lean_form_s": [], "export_load_s": [], "said": []}
    for r in range(rounds):
        for key, folder in (("lean_form_s", artifact), ("export_load_s", plain)):
            took, said = _ready_s(folder, token_file, PIN_SERVER)
            out[key].append(round(took, 3))
            if r == 0:
                out["said"].append(said)
        print(f"  load forms round {r + 1}: {out}", file=sys.stderr)
    for key in ("lean_form_s", "export_load_s"):
        out[key.replace("_s", "_median_s")] = round(float(np.median(out[key])), 3)
    out["ratio_export_to_lean"] = round(out["export_load_median_s"] / out["lean_form_median_s"], 2)
    return out


def fresh_replicas(artifact: Path, body: str, rounds: int) -> dict:
    """A replica started from nothing, with the zygote (forked) and without it (a new Python
    process), interleaved: first deploy, restart after kill -9, scale-up, and a request to an
    endpoint scaled to zero whose standby is gone."""
    from nbscale.endpoints import deploy, endpoint
    from nbscale.serving.zygote import warm_dir

    home = Path(os.environ["NBSCALE_HOME"])
    data = body.encode()
    out: dict[str, dict[str, list]] = {}
    for r in range(rounds):
        for mode in ("zygote", "fresh"):
            os.environ["NBSCALE_ZYGOTE"] = "1" if mode == "zygote" else "0"
            got = out.setdefault(mode, {})
            if mode == "zygote":  # the same without the warm zygote: the router starts one
                cold = f"cold-{r}"
                got.setdefault("first_deploy_no_warm_s", []).append(
                    _first_deploy(artifact, cold, data, {"NBSCALE_WARM_ZYGOTE": "0"})
                )
                endpoint(cold).delete()
                # a one-off deploy with nothing running (a CLI's first, or after the TTL): the
                # warm zygote is started by this deploy and claimed while it still preloads
                _stop_warm(warm_dir())
                once = f"once-{r}"
                got.setdefault("first_deploy_nothing_running_s", []).append(
                    _first_deploy(artifact, once, data, {})
                )
                got.setdefault("python_import_torch_s", []).append(_python_and_torch_s())
                endpoint(once).delete()
                _wait_warm(warm_dir())  # the session's warm zygote (%load_ext nbscale) is up
            name = f"fresh-{mode}-{r}"
            # first deploy: in a new process (as a notebook's first), from the call until the
            # first answer
            got.setdefault("first_deploy_s", []).append(_first_deploy(artifact, name, data, {}))
            ep = endpoint(name)
            token = (home / "endpoints" / name / "token").read_text().strip()
            url = f"{ep.url}/v2/models/{name}/infer"
            try:
                m = ep.metrics()
                got.setdefault("first_replica_start_s", []).append(
                    m["replica_list"][0]["start_seconds"]
                )
                # restart after kill -9: from the kill until a request is answered again
                pid = m["replica_list"][0]["pid"]
                os.kill(pid, signal.SIGKILL)
                t = time.perf_counter()
                while True:
                    try:
                        if _post(url, data, token) == 200:
                            break
                    except OSError:
                        time.sleep(0.005)
                got.setdefault("kill9_to_answer_s", []).append(round(time.perf_counter() - t, 3))
                reps = [r for r in ep.metrics()["replica_list"] if r["pid"] != pid]
                got.setdefault("kill9_replica_start_s", []).append(reps[0]["start_seconds"])
                # scale-up: one more replica, from the call until the router sees it ready
                t = time.perf_counter()
                ep.scale(2, 2)
                _wait_ready_replicas(ep, 2)
                got.setdefault("scale_up_s", []).append(round(time.perf_counter() - t, 3))
                got.setdefault("started_by", []).append(
                    sorted({r["started_by"] for r in ep.metrics()["replica_list"]})
                )
            finally:
                ep.delete()
            # scaled to zero, standby gone: the first request waits for a replica from nothing
            zname = f"zero-{mode}-{r}"
            ep = deploy(str(artifact), name=zname, replicas=(0, 1), idle_timeout_s=1)
            try:
                ztoken = (home / "endpoints" / zname / "token").read_text().strip()
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    m = ep.metrics()
                    if m["replicas"]["standby"] == 1:
                        break
                    time.sleep(0.05)
                pid = next(x["pid"] for x in m["replica_list"] if x["state"] == "paused")
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.3)  # the router sees the standby gone (its loop runs every 0.1 s)
                t = time.perf_counter()
                if _post(f"{ep.url}/v2/models/{zname}/infer", data, ztoken) != 200:
                    raise RuntimeError("the first request after scale to zero failed")
                got.setdefault("no_standby_first_request_s", []).append(
                    round(time.perf_counter() - t, 3)
                )
            finally:
                ep.delete()
            print(f"  fresh replicas round {r + 1} {mode}: {got}", file=sys.stderr)
    os.environ.pop("NBSCALE_ZYGOTE", None)
    summary: dict = {}
    for mode, got in out.items():
        summary[mode] = {}
        for key, values in got.items():
            if key == "started_by":
                summary[mode][key] = values
                continue
            vals = [v for v in values if v is not None]
            summary[mode][key] = {
                "median": round(float(np.median(vals)), 3) if vals else None,
                "min": min(vals) if vals else None,
                "max": max(vals) if vals else None,
                "rounds": values,
            }
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=int, default=3, help="wrk duration per sweep point")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median counts")
    ap.add_argument("--sweep", default="1,10,32,64", help="connection counts")
    ap.add_argument(
        "--no-pin", action="store_true", help="do not pin servers and wrk to CPUs 0 and 1"
    )
    ap.add_argument("--cold-rounds", type=int, default=5, help="scaled-to-zero first requests")
    ap.add_argument(
        "--fresh-rounds", type=int, default=3, help="rounds of fresh-replica starts (each mode)"
    )
    ap.add_argument(
        "--device", default="cpu", help="device for the nbscale rows (cuda where there is a GPU)"
    )
    ap.add_argument(
        "--only",
        help="comma-separated subset: bare-numpy,bare-torch,nbscale,nbscale-nobatch,nbscale-nopoll,"
        "nbscale-endpoint,"
        "nbscale-endpoint-proxy,nbscale-endpoint-autoscale,nbscale-endpoint-2,"
        "nbscale-endpoint-2-proxy,kserve,mlserver,cold-start,"
        "fresh-replica,load-form ('bare' means both bare variants)",
    )
    ap.add_argument("--out", default="serving", help="results/<out>.json")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print(
            "bench_serving: the load generator wrk is not installed; install it "
            "(apt-get install wrk) and run again",
            file=sys.stderr,
        )
        return 2
    sweep = [int(c) for c in args.sweep.split(",")]
    only = (
        set(args.only.split(","))
        if args.only
        else {
            *BARE_VARIANTS,
            "nbscale",
            "nbscale-nobatch",
            "nbscale-nopoll",
            "nbscale-endpoint",
            "nbscale-endpoint-proxy",
            "nbscale-endpoint-autoscale",
            "nbscale-endpoint-2",
            "nbscale-endpoint-2-proxy",
            "kserve",
            "mlserver",
            "cold-start",
            "fresh-replica",
            "load-form",
        }
    )
    if "bare" in only:
        only = (only - {"bare"}) | set(BARE_VARIANTS)
    known = {
        *BARE_VARIANTS,
        "nbscale",
        "nbscale-nobatch",
        "nbscale-nopoll",
        "nbscale-endpoint",
        "nbscale-endpoint-proxy",
        "nbscale-endpoint-autoscale",
        "nbscale-endpoint-2",
        "nbscale-endpoint-2-proxy",
        "kserve",
        "mlserver",
    }
    extra = {"cold-start", "fresh-replica", "load-form"}
    unknown = only - known - extra
    if unknown:
        print(
            f"bench_serving: --only names {', '.join(sorted(unknown))}, which is not a contender; "
            f"choose from {', '.join(sorted(known | extra | {'bare'}))}",
            file=sys.stderr,
        )
        return 2
    if not args.no_pin:
        if os.cpu_count() < 2 or not shutil.which("taskset"):
            print("bench_serving: pinning needs 2 CPUs and taskset; pass --no-pin", file=sys.stderr)
            return 2
        PIN_SERVER[:] = ["taskset", "-c", SERVER_CPU]
        PIN_LOAD[:] = ["taskset", "-c", LOAD_CPU]
    wanted = {"bare" if n in BARE_VARIANTS else n for n in only}
    pythons = setup_venvs(wanted & set(PEERS)) if wanted & set(PEERS) else {}
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    home = work / "home"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "NBSCALE_HOME": str(home),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(work), os.environ.get("PYTHONPATH")])),
    }
    (work / "mlp.py").write_text(MODEL_SRC)
    (work / "kserve_mlp.py").write_text(KSERVE_SRC)
    (work / "mlserver_mlp.py").write_text(MLSERVER_SRC)
    (work / BARE_VARIANTS["bare-numpy"]).write_text(BARE_SRC)
    (work / BARE_VARIANTS["bare-torch"]).write_text(BARE_TORCH_SRC)
    ns: dict = {}
    exec(MODEL_SRC, ns)
    torch.manual_seed(0)
    model = ns["MLP"]().eval()
    weights = work / "mlp.pt"
    torch.save(model.state_dict(), weights)
    x = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    body = json.dumps(
        {
            "id": "bench",
            "inputs": [
                {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x.ravel().tolist()}
            ],
        }
    )
    script = work / "post.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = [[{body}]]\nwrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {TOKEN}"\n'
    )
    bare = bare_forward_ms(weights, args.device)
    procs: list[subprocess.Popen] = []
    ep = None
    deployed: list = []
    signal.signal(
        signal.SIGTERM, lambda *_: sys.exit(143)
    )  # so the servers are stopped on the way out

    def start(cmd, cwd=None, extra_env=None):
        log = open(work / f"{len(procs)}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [*PIN_SERVER, *cmd],
            cwd=cwd or work,
            env={**env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        proc.log_path = work / f"{len(procs)}.log"
        procs.append(proc)
        return proc

    def stop(proc):
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    try:
        contenders = []
        if only & {
            "nbscale",
            "nbscale-nobatch",
            "nbscale-nopoll",
            "nbscale-endpoint",
            "nbscale-endpoint-proxy",
            "nbscale-endpoint-autoscale",
            "nbscale-endpoint-2",
            "nbscale-endpoint-2-proxy",
            "cold-start",
            "fresh-replica",
            "load-form",
        }:
            sys.path.insert(0, str(work))
            os.environ["NBSCALE_HOME"] = str(home)
            from nbscale.serving import package

            artifact = package(model, work / "artifact", "mlp")
            (work / "token").write_text(TOKEN)

        def bare_runner(src: str):
            def run_bare():
                port = free_port()
                proc = start([str(pythons["bare"]), str(work / src), str(port), str(weights)])
                return proc, port, f"http://127.0.0.1:{port}/v2/health/ready"

            return run_bare

        for variant, src in BARE_VARIANTS.items():
            if variant in only:
                contenders.append((variant, bare_runner(src)))

        def nbscale_runner(*extra: str):
            def run_nbscale():
                port = free_port()
                proc = start(
                    [
                        sys.executable,
                        "-m",
                        "nbscale.serving",
                        "--model-dir",
                        str(artifact),
                        "--port",
                        str(port),
                        "--token-file",
                        str(work / "token"),
                        *extra,
                    ],
                    extra_env={"NBSCALE_DEVICE": args.device},
                )
                return proc, port, f"http://127.0.0.1:{port}/v2/health/ready"

            return run_nbscale

        if "nbscale" in only:
            contenders.append(("nbscale", nbscale_runner()))
        if "nbscale-nobatch" in only:
            contenders.append(("nbscale-nobatch", nbscale_runner("--max-batch-size", "1")))
        if "nbscale-nopoll" in only:
            contenders.append(("nbscale-nopoll", nbscale_runner("--busy-poll-us", "0")))
        if "kserve" in only:

            def run_kserve():
                port = free_port()
                proc = start(
                    [
                        str(pythons["kserve"]),
                        str(work / "kserve_mlp.py"),
                        str(port),
                        str(free_port()),
                        str(weights),
                    ]
                )
                return proc, port, f"http://127.0.0.1:{port}/v2/health/ready"

            contenders.append(("kserve", run_kserve))
        if "mlserver" in only:

            def run_mlserver():
                port = free_port()
                repo = work / "mlserver-repo"
                (repo / "mlp").mkdir(parents=True, exist_ok=True)
                (repo / "settings.json").write_text(
                    json.dumps(
                        {
                            "http_port": port,
                            "grpc_port": free_port(),
                            "metrics_port": free_port(),
                            "parallel_workers": 0,
                            "host": "127.0.0.1",
                            "debug": False,
                        }
                    )
                )
                (repo / "mlp" / "model-settings.json").write_text(
                    json.dumps({"name": "mlp", "implementation": "mlserver_mlp.MLPRuntime"})
                )
                mlserver_bin = pythons["mlserver"].parent / "mlserver"
                proc = start(
                    [str(mlserver_bin), "start", str(repo)],
                    extra_env={"BENCH_WEIGHTS": str(weights)},
                )
                return proc, port, f"http://127.0.0.1:{port}/v2/models/mlp/ready"

            contenders.append(("mlserver", run_mlserver))
        targets: dict[str, tuple[str, Path]] = {}
        pids: dict[str, list[int]] = {}
        serving: dict[str, str] = {}
        for name, launch in contenders:
            proc, port, ready = launch()
            pids[name] = [proc.pid]
            wait_http(ready, proc=proc)
            url = f"http://127.0.0.1:{port}/v2/models/mlp/infer"
            check_prediction(url, body.encode(), expected)
            targets[name] = (url, script)
        deployed = []
        observe: dict = {}
        settling: dict = {}
        for contender, ep_name, direct, replicas, want in (
            ("nbscale-endpoint", "mlp", "1", (1, 1), "replica"),
            ("nbscale-endpoint-proxy", "mlp-proxy", "0", (1, 1), "router"),
            ("nbscale-endpoint-autoscale", "mlp-autoscale", "1", (1, 4), "replica"),
            ("nbscale-endpoint-2", "mlp-two", "1", (2, 2), "replicas"),
            ("nbscale-endpoint-2-proxy", "mlp-two-proxy", "1", (2, 2), "router"),
        ):
            if contender not in only:
                continue
            from nbscale.endpoints import deploy

            mask = os.sched_getaffinity(0)
            if PIN_SERVER:  # supervisor, router, zygote and replica inherit CPU 0 from us
                os.sched_setaffinity(0, {int(SERVER_CPU)})
            os.environ["NBSCALE_DIRECT"] = direct  # 0: the router proxies even to one replica
            try:
                ep = deploy(
                    str(artifact),
                    name=ep_name,
                    replicas=replicas,
                    options={"direct": False} if contender.endswith("-2-proxy") else None,
                )
                deployed.append(ep)
            finally:
                os.sched_setaffinity(0, mask)
                os.environ.pop("NBSCALE_DIRECT", None)
            deadline = time.monotonic() + 30
            while ep.metrics()["serving"] != want and time.monotonic() < deadline:
                time.sleep(0.05)
            token = (home / "endpoints" / ep_name / "token").read_text().strip()
            ep_script = work / f"post-{ep_name}.lua"
            ep_script.write_text(script.read_text().replace(TOKEN, token))
            targets[contender] = (f"{ep.url}/v2/models/{ep_name}/infer", ep_script)
            m = ep.metrics()
            serving[contender] = m["serving"]
            pids[contender] = [m["router_pid"], *(r["pid"] for r in m["replica_list"])]
            if replicas[0] != replicas[1]:
                # replicas it starts under load are forked by its zygote: counted with it
                pids[contender] += [m["zygote_pid"]] if m.get("zygote_pid") else []

                def state(ep=ep) -> dict:
                    after = ep.metrics()
                    return {
                        "replicas_at_end": after["replicas"]["current"],
                        "serving_at_end": after["serving"],
                    }

                observe[contender] = state

                def back_to_one(ep=ep, replicas=replicas) -> int:
                    """Each point starts from one replica, as after an idle spell: the last
                    point's replicas would otherwise stay for 30 s each (scale_down_delay_s).
                    Returns the replicas it found (what a point right after a burst meets)."""
                    m = ep.metrics()
                    found = m["replicas"]["current"]
                    if found == 1 and m["serving"] == "replica":
                        return found
                    ep.scale(1, 1)
                    deadline = time.monotonic() + 60
                    while ep.metrics()["serving"] != "replica" and time.monotonic() < deadline:
                        time.sleep(0.05)
                    time.sleep(2.5)  # the router's 2 s window of in-flight samples forgets it
                    ep.scale(*replicas)
                    return found

                settling[contender] = back_to_one
        results, loads = measure(targets, sweep, args.seconds, args.rounds, pids, observe, settling)
        for ep in deployed:
            ep.delete()
        deployed, ep = [], None
        cold = cold_starts(artifact, body, args.cold_rounds) if "cold-start" in only else None
        fresh = (
            fresh_replicas(artifact, body, args.fresh_rounds) if "fresh-replica" in only else None
        )
        forms = None
        if "load-form" in only:
            forms = load_forms(artifact, work / "token", args.fresh_rounds)
            forms["package"] = package_cost(model, max(5, args.fresh_rounds))
    finally:
        for left in [*deployed, *([ep] if ep is not None else [])]:
            with contextlib.suppress(Exception):
                left.delete()
        for proc in procs:
            if proc.poll() is None:
                stop(proc)
    for r in results.values():
        r["p50_overhead_ms"] = round(r["p50_ms_at_1_connection"] - bare, 3)
    reference = bare_reference(results, sweep)
    ratios: dict = {}
    for name, r in results.items():
        per = {}
        for c in sweep:
            rps = r["rps_by_connections"][str(c)]
            row = {}
            ref = reference.get(str(c))
            if ref is not None and name != ref:
                ref_point = next(p for p in results[ref]["sweep"] if p["connections"] == c)
                point = next(p for p in r["sweep"] if p["connections"] == c)
                row["vs_bare"] = round(rps / results[ref]["rps_by_connections"][str(c)], 2)
                row["p99_vs_bare"] = round(point["p99_ms"] / ref_point["p99_ms"], 2)
                row["bare"] = ref
            peers = [
                results[p]["rps_by_connections"][str(c)]
                for p in ("kserve", "mlserver")
                if p in results
            ]
            if peers and name not in ("kserve", "mlserver") and max(peers):
                row["vs_best_peer"] = round(rps / max(peers), 2)
            per[str(c)] = row
        ratios[name] = per
    goals = {}
    if reference:
        for name in (
            "nbscale-nobatch",
            "nbscale",
            "nbscale-endpoint",
            "nbscale-endpoint-proxy",
            "nbscale-endpoint-autoscale",
            "nbscale-endpoint-2",
            "nbscale-endpoint-2-proxy",
        ):
            if name not in ratios:
                continue
            p99_met = {
                c: row["p99_vs_bare"] <= P99_GOAL_X
                for c, row in ratios[name].items()
                if "p99_vs_bare" in row
            }
            goals[name] = {f"p99_at_most_{P99_GOAL_X}x_bare": p99_met}
            if name.startswith("nbscale-endpoint"):
                goals[name][f"rps_at_least_{ENDPOINT_GOAL_X}x_bare"] = {
                    c: row["vs_bare"] >= ENDPOINT_GOAL_X
                    for c, row in ratios[name].items()
                    if "vs_bare" in row
                }
            if name == "nbscale-nobatch":
                goals[name][f"rps_at_least_{NOBATCH_GOAL_X}x_bare"] = {
                    c: row["vs_bare"] >= NOBATCH_GOAL_X
                    for c, row in ratios[name].items()
                    if "vs_bare" in row
                }
    save(
        args.out,
        {
            "model": "MLP 64-128-10 (torch), one row of 64 FP32 per request, V2 JSON",
            "load_generator": "wrk 4.1 (1 thread, closed loop), connections swept",
            "pinning": "none"
            if not PIN_SERVER
            else f"servers on CPU {SERVER_CPU}, wrk on CPU {LOAD_CPU}",
            "rounds": args.rounds,
            "seconds_per_point": args.seconds,
            "device": args.device,
            "bare_forward_ms": round(bare, 4),
            "p99_limit_ms": P99_LIMIT_MS,
            "servers": results,
            "bare_reference": reference,
            "ratios": ratios,
            "goals": goals,
            "load_average_1_5_15_at_each_round_and_end": loads,
            "cold_start": cold,
            "fresh_replica": fresh,
            "load_form": forms,
            "endpoint_serving": serving,
            "when_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "notes": "one server process each, OMP_NUM_THREADS=1; bare-numpy and bare-torch are the two "
            "bare Starlette+uvicorn apps, and every vs_bare / p99_vs_bare ratio is against the one named "
            "in bare_reference at that connection count (the one that served more requests/s); nbscale-nobatch is the runtime with "
            "--max-batch-size 1; nbscale-nopoll is the runtime (batching on) with --busy-poll-us 0, no "
            "busy polling after an answer; nbscale-endpoint is the deployed endpoint (supervisor, router, zygote and "
            "1 replica on one CPU; the lone replica serves the endpoint's socket itself, endpoint_serving "
            "says so); nbscale-endpoint-proxy is the same with NBSCALE_DIRECT=0 (the router proxies every "
            "request); nbscale-endpoint-autoscale is an endpoint of 1 to 4 replicas (target 4 in flight "
            "each), all on the same CPU, every replica serving the socket (replicas_at_end and "
            "serving_at_end at each point), "
            "and adds a replica only while the endpoint leaves half a CPU free (on one CPU, none "
            "once the first fills it); "
            "nbscale-endpoint-2 is an endpoint fixed at 2 replicas (direct, the default: both accept on "
            "the endpoint's socket, no hop), nbscale-endpoint-2-proxy the same deployed with --proxy "
            "(the router proxies, and retries a request that hit a dead replica), both on the one CPU; "
            "fresh_replica: replicas started from nothing with the zygote (forked) and without "
            "it (NBSCALE_ZYGOTE=0, a new Python process), interleaved; its first_deploy_s is a new "
            "process's first deploy() with the home's warm zygote preloaded (as after %load_ext "
            "nbscale), first_deploy_no_warm_s the same with NBSCALE_WARM_ZYGOTE=0, "
            "first_deploy_nothing_running_s with the warm zygote on but none running (started "
            "by that deploy, as a one-off CLI deploy or one after its TTL), and beside it "
            "python_import_torch_s, a new Python process until it has imported torch (that "
            "deploy's floor: the warm zygote does that before it can fork); load_form: a new "
            "python -m nbscale.serving process until ready, of the artifact with its lean form and of "
            "the same artifact without it (torch.export.load), interleaved, and package() of the model with "
            "and without writing the lean form (load_form.package); "
            "the machine was shared with other engineers' work while this ran",
        },
    )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
