"""Does data capture slow a request? The serving runtime with capture on (every request) and off.

    python benchmarks/bench_capture.py [--requests 3000] [--rounds 3]

Two measurements, results in ``benchmarks/results/capture.json``:

- in-process: the time ``DataCapture.offer`` takes on the request path for a
  request of 20 rows x 64 FP32, against converting the same arrays to lists
  there (what the request path paid before the conversion moved to the writer
  thread);
- end to end: one runtime process with ``--capture-dir`` and one without, the
  same MLP (64-64-10), sequential requests of 20 rows over one keep-alive
  connection, rounds interleaved; p50/p99 client latency.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, machine  # noqa: E402

from nbscale.serving.artifact import package  # noqa: E402
from nbscale.serving.capture import DataCapture  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_process(calls: int, tmp: Path) -> dict:
    rng = np.random.default_rng(0)
    inputs = {"input": rng.random((20, 64), dtype=np.float32)}
    outputs = {"output": rng.random((20, 10), dtype=np.float32)}
    cap = DataCapture(tmp / "cap-bench")
    offer, convert = [], []
    for i in range(calls):
        t = time.perf_counter_ns()
        cap.offer("m", str(i), inputs, outputs)
        offer.append(time.perf_counter_ns() - t)
        t = time.perf_counter_ns()
        {k: np.asarray(v).tolist() for k, v in inputs.items()}
        {k: np.asarray(v).tolist() for k, v in outputs.items()}
        convert.append(time.perf_counter_ns() - t)
        if cap._q.qsize() > 5000:
            cap.flush(30)
    cap.flush(60)
    return {
        "offer_p50_us": statistics.median(offer) / 1000,
        "convert_in_request_p50_us": statistics.median(convert) / 1000,
        "written": cap.written,
        "dropped": cap.dropped,
    }


class Runtime:
    def __init__(self, model_dir: Path, tmp: Path, capture: bool):
        self.port = free_port()
        token = tmp / f"token-{self.port}"
        token.write_text(secrets.token_urlsafe(16))
        self.auth = {"Authorization": f"Bearer {token.read_text()}"}
        extra = ["--capture-dir", str(tmp / f"cap-{self.port}")] if capture else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nbscale.serving", "--model-dir", str(model_dir),
             "--port", str(self.port), "--token-file", str(token), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/v2/health/ready")
                if c.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("runtime did not become ready")

    def latencies(self, n: int, body: bytes) -> list[float]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        out = []
        headers = {**self.auth, "Content-Type": "application/json"}
        for _ in range(n):
            t = time.perf_counter()
            conn.request("POST", "/v2/models/bench/infer", body, headers)
            resp = conn.getresponse()
            resp.read()
            out.append(time.perf_counter() - t)
            assert resp.status == 200
        conn.close()
        return out

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
        )
        model_dir = package(model, tmp / "model", "bench")
        x = np.random.default_rng(1).random((20, 64), dtype=np.float32)
        body = json.dumps(
            {"inputs": [{"name": "input", "shape": [20, 64], "datatype": "FP32",
                         "data": x.reshape(-1).tolist()}]}
        ).encode()  # fmt: skip
        offer = in_process(20_000, tmp)
        print(f"in-process: {offer}", file=sys.stderr)
        servers = {
            "capture off": Runtime(model_dir, tmp, False),
            "capture on": Runtime(model_dir, tmp, True),
        }
        samples: dict[str, list[float]] = {k: [] for k in servers}
        try:
            for srv in servers.values():
                srv.latencies(300, body)  # warm-up
            for r in range(args.rounds):
                for name, srv in servers.items():
                    samples[name] += srv.latencies(args.requests, body)
                    print(
                        f"  round {r + 1} {name}: p50 {np.percentile(samples[name], 50) * 1e3:.3f} ms",
                        file=sys.stderr,
                    )
        finally:
            for srv in servers.values():
                srv.stop()
    e2e = {
        name: {
            "p50_ms": float(np.percentile(v, 50) * 1e3),
            "p99_ms": float(np.percentile(v, 99) * 1e3),
            "requests": len(v),
        }
        for name, v in samples.items()
    }
    e2e["p50_ratio_on_vs_off"] = e2e["capture on"]["p50_ms"] / e2e["capture off"]["p50_ms"]
    e2e["p99_ratio_on_vs_off"] = e2e["capture on"]["p99_ms"] / e2e["capture off"]["p99_ms"]
    result = {"in_process": offer, "end_to_end": e2e, "machine": machine(), "time": time.time()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "capture.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
