"""``GET /nbscale/api/jobs``: p50 per page at 10,000 and 100,000 jobs (target: every page <= 5 ms).

For each store size, a real jupyter server (with the nbscale extension) runs in
its own process on 127.0.0.1 over a store filled with that many job records; a
keep-alive client asks for the first, a middle and the last page by keyset
cursor (``?after=``), with and without a status filter. Side by side in the
same rounds, the same client times ``GET /api/status``, the server's cheapest
authenticated route, as the floor any route pays (auth, tornado, loopback HTTP).

The server no longer takes ``offset``, so the OFFSET side of the comparison is
timed in this process on the same database file: the old store query (``COUNT(*)``
with the filter, then ``ORDER BY created DESC, id LIMIT ? OFFSET ?``, the one
``list_jobs`` ran until the keyset change) against the new one (an index seek
after the cursor, and the total from ``job_counts``), interleaved round by round.

    python benchmarks/bench_api.py [--sizes 10000,100000] [--requests 300] [--page 50]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import save  # noqa: E402

TARGET_P50_MS = 5.0
# finished jobs only: a RUNNING or PENDING record without its supervisor is what the server's
# poller looks at every 2 s and marks LOST (a write per job), and thousands of those would
# time the poller's catch-up rather than the route (the pre-keyset runs included it)
STATUSES = ("SUCCEEDED",) * 7 + ("FAILED", "CANCELLED", "LOST")
ROUNDS = 10


def fill_store(home: Path, n: int) -> None:
    """``n`` job records as the local backend leaves them, written in one transaction."""
    from nbscale.store import Store

    store = Store(home / "nbscale.db")
    rng = random.Random(0)
    now = time.time() - n * 60
    rows = []
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
        rows.append(
            (
                f"job-{i:06d}",
                spec["name"],
                status,
                json.dumps(spec),
                started - 1,
                started,
                ended,
                json.dumps({"job_dir": "/nonexistent"}),
            )
        )
    store.write(
        lambda conn: conn.executemany(
            "INSERT INTO jobs (id, name, backend, backend_type, status, spec, created, started, "
            "ended, info) VALUES (?, ?, 'local', 'local', ?, ?, ?, ?, ?, ?)",
            rows,
        )
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


def timed(call: Callable[[], object], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def interleaved(calls: dict[str, Callable[[], object]], per_variant: int) -> dict[str, list]:
    """``per_variant`` calls of each, in ROUNDS rounds; per round its own p50 too."""
    for call in calls.values():  # warm up caches and connections
        timed(call, 10)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    rounds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(ROUNDS):  # so a noisy neighbour hits every variant alike
        for name, call in calls.items():
            got = timed(call, max(1, per_variant // ROUNDS))
            samples[name] += got
            rounds[name].append(statistics.median(got))
    return {"samples": samples, "rounds": rounds}


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def stats(samples: list[float], rounds: list[float]) -> dict:
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p95_ms": round(pct(samples, 95), 3),
        "round_p50s_ms": [round(min(rounds), 3), round(max(rounds), 3)],
    }


def positions(n: int, page: int) -> dict[str, int]:
    """Rows before the first, a middle and the last page."""
    return {"first": 0, "middle": (n // 2) // page * page, "last": (n - 1) // page * page}


def cursor_before(conn: sqlite3.Connection, offset: int, status: str | None) -> str | None:
    """The cursor the page before this position hands out: the one a client would send."""
    from nbscale.store.paging import JOBS, encode_cursor

    if offset == 0:
        return None
    where = "WHERE status = ?" if status else ""
    row = conn.execute(
        f"SELECT created, id FROM jobs {where} ORDER BY created DESC, id DESC LIMIT 1 OFFSET ?",
        ((status,) if status else ()) + (offset - 1,),
    ).fetchone()
    return encode_cursor(JOBS, row[0], row[1])


def store_side_by_side(db: Path, n: int, page: int, per_variant: int) -> dict:
    """OFFSET (the old query) against keyset (the new one), in this process, same file."""
    from nbscale.store import Store
    from nbscale.store.jobs import JobRecord, count_jobs, page_jobs

    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    store = Store(db)
    n_failed = conn.execute("SELECT COUNT(*) FROM jobs WHERE status = 'FAILED'").fetchone()[0]

    def old(status: str | None, offset: int) -> Callable[[], object]:
        where, params = ("WHERE status = ?", (status,)) if status else ("", ())

        def call() -> object:
            total = conn.execute(f"SELECT COUNT(*) FROM jobs {where}", params).fetchone()[0]
            rows = conn.execute(
                f"SELECT * FROM jobs {where} ORDER BY created DESC, id LIMIT ? OFFSET ?",
                (*params, page, offset),
            ).fetchall()
            return [JobRecord.from_row(r) for r in rows], total

        return call

    def new(status: str | None, offset: int) -> Callable[[], object]:
        after = cursor_before(conn, offset, status)
        return lambda: page_jobs(store, status=status, limit=page, after=after)

    calls: dict[str, Callable[[], object]] = {}
    for status, count in ((None, n), ("FAILED", n_failed)):
        for where, offset in positions(count, page).items():
            name = f"{where} page" + (f", status={status}" if status else "")
            calls[f"OFFSET, {name}"] = old(status, offset)
            calls[f"keyset, {name}"] = new(status, offset)
    # the total: COUNT(*) over the filter (what every OFFSET page paid) against job_counts
    for status in (None, "SUCCEEDED", "FAILED"):
        where, params = ("WHERE status = ?", (status,)) if status else ("", ())
        name = "total" + (f", status={status}" if status else "")
        calls[f"COUNT(*), {name}"] = lambda w=where, p=params: conn.execute(
            f"SELECT COUNT(*) FROM jobs {w}", p
        ).fetchone()
        calls[f"job_counts, {name}"] = lambda st=status: count_jobs(store, st)
    got = interleaved(calls, per_variant)
    conn.close()
    store.close()
    return {name: stats(got["samples"][name], got["rounds"][name]) for name in calls}


def http_pages(home: Path, root: Path, n: int, page: int, per_variant: int) -> dict:
    conn = sqlite3.connect(home / "nbscale.db")
    n_failed = conn.execute("SELECT COUNT(*) FROM jobs WHERE status = 'FAILED'").fetchone()[0]
    variants: dict[str, dict] = {}
    for status, count in ((None, n), ("FAILED", n_failed)):
        for where, offset in positions(count, page).items():
            params = {"limit": page, **({"status": status} if status else {})}
            after = cursor_before(conn, offset, status)
            if after:
                params["after"] = after
            variants[f"{where} page" + (f", status={status}" if status else "")] = params
    conn.close()

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
        # the pages are what they claim: full, and the last one ends the list
        for name, params in variants.items():
            body = client.get("/nbscale/api/jobs", params=params).json()
            assert len(body["jobs"]) >= 1 and body["total"] in (n, n_failed), (name, body)
            assert (body["next"] is None) == name.startswith("last"), (name, body["next"])

        def get(path: str, params: dict) -> Callable[[], object]:
            return lambda: client.get(path, params=params).raise_for_status()

        calls = {name: get("/nbscale/api/jobs", p) for name, p in variants.items()}
        calls["jupyter_server /api/status (floor)"] = get("/api/status", {})
        got = interleaved(calls, per_variant)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    floor = statistics.median(got["samples"]["jupyter_server /api/status (floor)"])
    out = {}
    for name in calls:
        entry = stats(got["samples"][name], got["rounds"][name])
        entry["ratio_p50_vs_floor"] = round(entry["p50_ms"] / floor, 2)
        out[name] = entry
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--requests", type=int, default=300, help="per variant, HTTP")
    ap.add_argument("--store-calls", type=int, default=300, help="per variant, in process")
    ap.add_argument("--page", type=int, default=50)
    args = ap.parse_args()

    result: dict = {
        "page_size": args.page,
        "requests_per_variant": args.requests,
        "store_calls_per_variant": args.store_calls,
        "rounds": ROUNDS,
        "target_p50_ms": TARGET_P50_MS,
        "sizes": {},
    }
    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="nbs-bench-api-") as tmp:
            home, root = Path(tmp) / "home", Path(tmp) / "root"
            home.mkdir()
            root.mkdir()
            t0 = time.perf_counter()
            fill_store(home, n)
            print(f"{n} jobs in the store in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
            http = http_pages(home, root, n, args.page, args.requests)
            store = store_side_by_side(home / "nbscale.db", n, args.page, args.store_calls)
        pages = {k: v for k, v in http.items() if "floor" not in k}
        worst = max(v["p50_ms"] for v in pages.values())
        ratios = {
            name.removeprefix("OFFSET, "): round(
                v["p50_ms"] / store[name.replace("OFFSET", "keyset", 1)]["p50_ms"], 1
            )
            for name, v in store.items()
            if name.startswith("OFFSET")
        }
        ratios.update(
            {
                name.removeprefix("COUNT(*), "): round(
                    v["p50_ms"] / store[name.replace("COUNT(*)", "job_counts", 1)]["p50_ms"], 1
                )
                for name, v in store.items()
                if name.startswith("COUNT(*)")
            }
        )
        result["sizes"][str(n)] = {
            "http_keyset": http,
            "store_offset_vs_keyset": store,
            "store_ratio_offset_over_keyset": ratios,
            "worst_page_p50_ms": worst,
            "meets_target": worst <= TARGET_P50_MS,
        }
        print(f"{n}: worst HTTP page p50 {worst:.2f} ms", file=sys.stderr)
    result["meets_target"] = all(s["meets_target"] for s in result["sizes"].values())
    save("api", result)


if __name__ == "__main__":
    main()
