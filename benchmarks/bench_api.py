"""``GET /nbscale/api/jobs`` with 10,000 jobs in the store: time per page (target: p50 <= 20 ms).

A real jupyter server (with the nbscale extension) runs in its own process on
127.0.0.1 over a store filled with 10,000 job records; a keep-alive client
asks for pages at the front, middle and end of the list and with a status
filter. Side by side, the same client times ``GET /api/status``, the server's
cheapest authenticated route, as the floor any route pays (auth, tornado,
loopback HTTP).

    python benchmarks/bench_api.py [--jobs 10000] [--requests 300]
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import save  # noqa: E402

TARGET_P50_MS = 20.0
STATUSES = ("SUCCEEDED",) * 6 + ("FAILED", "CANCELLED", "RUNNING", "PENDING")


def fill_store(home: Path, n: int) -> None:
    os.environ["NBSCALE_HOME"] = str(home)
    from nbscale.store import get_store
    from nbscale.store.jobs import JobRecord, insert_job

    store = get_store()
    rng = random.Random(0)
    now = time.time() - n * 60
    for i in range(n):
        status = rng.choice(STATUSES)
        started = now + i * 60
        ended = started + rng.uniform(30, 3600) if status not in ("RUNNING", "PENDING") else None
        spec = {
            "entry": {
                "kind": "notebook",
                "target": f"/work/nb-{i % 50}.ipynb",
                "parameters": {"lr": 0.01},
            },
            "name": f"job-{i % 50}",
            "nodes": rng.choice((1, 2, 4)),
            "procs_per_node": 2,
            "gpus_per_proc": 1,
            "backend": "local",
        }
        insert_job(
            store,
            JobRecord(
                f"job-{i:05d}",
                spec["name"],
                "local",
                "local",
                status,
                spec,
                created=started - 1,
                started=started,
                ended=ended,
                info={"job_dir": "/nonexistent"},
            ),
        )
    store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, root: Path, port: int, token: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "NBSCALE_HOME": str(home),
        "JUPYTER_CONFIG_DIR": str(root / ".jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(root / ".jupyter-runtime"),
    }
    cmd = [
        sys.executable,
        "-m",
        "jupyter",
        "server",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.jpserver_extensions=nbscale.server_ext=True",
        "--ServerApp.log_level=WARN",
    ]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    return subprocess.Popen(
        cmd,
        env=env,
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def timed(client: httpx.Client, path: str, params: dict, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        resp = client.get(path, params=params)
        samples.append((time.perf_counter() - t0) * 1000)
        resp.raise_for_status()
    return samples


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--page", type=int, default=50)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="nbs-bench-api-") as tmp:
        home, root = Path(tmp) / "home", Path(tmp) / "root"
        root.mkdir()
        t0 = time.perf_counter()
        fill_store(home, args.jobs)
        print(
            f"filled the store with {args.jobs} jobs in {time.perf_counter() - t0:.1f}s",
            file=sys.stderr,
        )
        port, token = free_port(), secrets.token_hex(16)
        proc = start_server(home, root, port, token)
        try:
            client = httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"token {token}"},
                timeout=10,
            )
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/nbscale/api/version").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the jupyter server did not start")
                time.sleep(0.2)
            first = client.get("/nbscale/api/jobs", params={"limit": args.page}).json()
            assert first["total"] == args.jobs and len(first["jobs"]) == args.page, first["total"]

            variants = {
                "first page": {"limit": args.page, "offset": 0},
                "middle page": {"limit": args.page, "offset": args.jobs // 2},
                "last page": {"limit": args.page, "offset": args.jobs - args.page},
                "status=FAILED": {"limit": args.page, "status": "FAILED"},
            }
            contenders = {
                **{f"nbscale jobs, {k}": ("/nbscale/api/jobs", v) for k, v in variants.items()},
                "jupyter_server /api/status (floor)": ("/api/status", {}),
            }
            for path, params in contenders.values():  # warm up caches and connections
                timed(client, path, params, 20)
            samples: dict[str, list[float]] = {name: [] for name in contenders}
            rounds = 10
            for _ in range(rounds):  # interleaved so a noisy neighbour hits all alike
                for name, (path, params) in contenders.items():
                    samples[name] += timed(client, path, params, args.requests // rounds)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)

    floor = statistics.median(samples["jupyter_server /api/status (floor)"])
    result = {
        "jobs_in_store": args.jobs,
        "page_size": args.page,
        "requests_per_variant": args.requests,
        "target_p50_ms": TARGET_P50_MS,
        "p50_ms": {k: round(statistics.median(v), 2) for k, v in samples.items()},
        "p95_ms": {k: round(pct(v, 95), 2) for k, v in samples.items()},
        "ratio_p50_vs_floor": {
            k: round(statistics.median(v) / floor, 2) for k, v in samples.items()
        },
        "samples_ms": {k: [round(x, 3) for x in v] for k, v in samples.items()},
    }
    worst = max(v for k, v in result["p50_ms"].items() if k.startswith("nbscale"))
    result["worst_page_p50_ms"] = worst
    result["meets_target"] = worst <= TARGET_P50_MS
    save("api", {k: v for k, v in result.items()})


if __name__ == "__main__":
    main()
