"""A job's entry point inside someone else's container (a Kubeflow pod, a SageMaker host).

    python -m nbscale.runtime.launch --job-id ID --spec B64 --bundle URI --outputs URI

One launch runs per node. It

1. makes the job's directory under *its own* ``$NBSCALE_HOME`` (a container is
   another machine: nothing is shared with the submitter but object storage and
   the key the platform delivers);
2. unpacks the job's folder (the spec's ``code``: ``code.zip``, its name signed with
   the bundle key and checked file by file) and installs its requirements (the spec's
   ``requirements_wheels``: offline from the wheelhouse that came, or from the index);
   the ranks start in that folder, with it on ``PYTHONPATH``, so sibling modules import
   and relative paths resolve as in the kernel;
3. fetches the cell bundle (``s3://...`` or a path the platform mounted) and
   verifies its signature before any worker starts, so a wrong or missing key
   fails in one message;
4. reads the node layout the platform gives: Kubeflow Trainer's ``PET_*``
   variables, SageMaker's ``SM_HOSTS``/``SM_CURRENT_HOST`` (or
   ``resourceconfig.json``), else a single standalone node;
5. runs torchrun with ``nbscale.runtime.worker`` for this node's ranks, and
   prints every local rank's log lines to stdout as ``[rank N] line`` (the
   platform's log collector reads stdout);
6. writes back, under ``--outputs``, ``nodes/<node_rank>.json`` (exit code and
   the ranks' errors) and, from the node that ran rank 0, ``results.zip`` (signed
   by the worker with the delivered key), and a notebook job's executed notebook
   ``notebooks/rank-0.ipynb``.

On SageMaker ``--outputs`` is ``/opt/ml/model``, and whether SageMaker uploads every
host's folder or only one host's is not something the driver relies on: rank 0 runs on
the first host (``algo-1``), so ``results.zip`` and ``nodes/0.json`` are in algo-1's
folder, and every node also prints its record as one ``nbscale: node-record {...}``
line on stdout (CloudWatch keeps every host's stream) and writes a failed node's root
cause to ``/opt/ml/output/failure``, which SageMaker reports as the job's
``FailureReason``. Another host's ``nodes/<n>.json`` is a bonus, never required.

The spec travels inline (base64 JSON) in the container's arguments: it is no
more trusted than the command line itself, and it holds no secret.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .hardware import check_node
from .jobdir import JobDir

SM_RESOURCE_CONFIG = "/opt/ml/input/config/resourceconfig.json"
DEFAULT_MASTER_PORT = 29500


class LaunchError(Exception):
    """A problem the container can name before training starts."""


def encode_spec(spec: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(spec, sort_keys=True).encode()).decode()


def decode_spec(text: str) -> dict[str, Any]:
    try:
        spec = json.loads(base64.urlsafe_b64decode(text.encode()))
    except ValueError as exc:
        raise LaunchError(f"--spec is not base64 JSON: {exc}") from None
    if not isinstance(spec, dict) or "entry" not in spec:
        raise LaunchError("--spec is not an nbscale job spec")
    return spec


# -- where am I? ---------------------------------------------------------------------------
def node_layout(spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """nnodes, node_rank, master address/port and processes per node, from the platform."""
    env = dict(os.environ if env is None else env)
    nproc = int(env.get("PET_NPROC_PER_NODE") or spec.get("procs_per_node") or 1)
    if env.get("PET_NNODES"):  # Kubeflow Trainer's torch runtime
        return {
            "platform": "kubeflow",
            "nnodes": int(env["PET_NNODES"]),
            "node_rank": int(env.get("PET_NODE_RANK", "0")),
            "master_addr": env.get("PET_MASTER_ADDR", "127.0.0.1"),
            "master_port": int(env.get("PET_MASTER_PORT") or DEFAULT_MASTER_PORT),
            "nproc": nproc,
        }
    hosts, current = None, None
    if env.get("SM_HOSTS"):
        hosts, current = json.loads(env["SM_HOSTS"]), env.get("SM_CURRENT_HOST")
    elif os.path.exists(env.get("NBSCALE_SM_RESOURCE_CONFIG", SM_RESOURCE_CONFIG)):
        with open(env.get("NBSCALE_SM_RESOURCE_CONFIG", SM_RESOURCE_CONFIG)) as fh:
            conf = json.load(fh)
        hosts, current = conf["hosts"], conf["current_host"]
    if hosts:
        hosts = sorted(hosts)  # SageMaker names hosts algo-1..N; every host sorts them alike
        if current not in hosts:
            raise LaunchError(f"SM_CURRENT_HOST {current!r} is not among SM_HOSTS {hosts}")
        # a map from host name to address, for hosts that are not resolvable by name
        addresses = json.loads(env.get("NBSCALE_HOST_ADDRESSES") or "{}")
        return {
            "platform": "sagemaker",
            "nnodes": len(hosts),
            "node_rank": hosts.index(current),
            "master_addr": addresses.get(hosts[0], hosts[0]),
            "master_port": int(env.get("NBSCALE_MASTER_PORT") or DEFAULT_MASTER_PORT),
            "nproc": nproc,
        }
    return {
        "platform": "standalone",
        "nnodes": 1,
        "node_rank": 0,
        "master_addr": "127.0.0.1",
        "master_port": 0,
        "nproc": nproc,
    }


def torchrun_command(spec: dict[str, Any], layout: dict[str, Any], job_id: str) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={layout['nproc']}"]
    if layout["nnodes"] == 1:
        cmd.append("--standalone")
    else:
        cmd += [
            f"--nnodes={layout['nnodes']}",
            f"--node-rank={layout['node_rank']}",
            f"--master-addr={layout['master_addr']}",
            f"--master-port={layout['master_port']}",
            f"--rdzv-id={job_id}",
        ]
    cmd += [f"--max-restarts={int(spec.get('max_restarts') or 0)}", "--monitor-interval=0.2"]
    return [*cmd, "-m", "nbscale.runtime.worker"]


# -- logs to stdout ------------------------------------------------------------------------
class RankLogs(threading.Thread):
    """Follow ``logs/rank-*.log`` of this node and print each line prefixed with its rank."""

    def __init__(self, jobdir: JobDir, out=None):
        super().__init__(daemon=True, name="nbscale-rank-logs")
        self.jobdir = jobdir
        self.out = out or sys.stdout
        self.offsets: dict[int, int] = {}
        self.partial: dict[int, bytes] = {}
        self.done = threading.Event()

    def pump(self) -> None:
        for rank in self.jobdir.log_ranks():
            path = self.jobdir.log(rank)
            try:
                with open(path, "rb") as fh:
                    fh.seek(self.offsets.get(rank, 0))
                    data = fh.read(1 << 20)
            except OSError:
                continue
            if not data:
                continue
            self.offsets[rank] = self.offsets.get(rank, 0) + len(data)
            lines = (self.partial.pop(rank, b"") + data).split(b"\n")
            if lines[-1]:
                self.partial[rank] = lines[-1]
            for line in lines[:-1]:
                self.out.write(f"[rank {rank}] {line.decode(errors='replace')}\n")
        self.out.flush()

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.pump()

    def finish(self) -> None:
        self.done.set()
        self.join(5)
        self.pump()
        for rank, rest in sorted(self.partial.items()):
            self.out.write(f"[rank {rank}] {rest.decode(errors='replace')}\n")
        self.partial.clear()
        self.out.flush()


# -- the steps -----------------------------------------------------------------------------
def _home() -> Path:
    from .. import paths

    return paths.home()


def stage_inputs(spec: dict[str, Any], bundle_uri: str | None, jobdir: JobDir) -> dict[str, Any]:
    """Fetch the bundle into the job directory and verify it; return the spec that runs it."""
    spec = json.loads(json.dumps(spec))
    if spec["entry"]["kind"] != "bundle":
        return spec
    if not bundle_uri:
        raise LaunchError("a cell job needs --bundle (the URI or path of its signed bundle)")
    from .. import bundle, storage
    from .cell import KIND

    local = jobdir.path / "cell.zip"
    storage.fetch(bundle_uri, local, store=storage.store_for(bundle_uri, _storage_options()))
    bundle.read(local, KIND)  # the signature and every part's hash, before any worker starts
    spec["entry"]["target"] = str(local)
    return spec


def _fetch_named(what: str, info: dict[str, Any], dest: Path) -> Path:
    """Fetch a content-named input (the job's folder, its wheelhouse) and check that this
    job's home named it (the HMAC of its name with the delivered bundle key)."""
    from .. import bundle, storage

    name = info.get("sha256")
    if not name or not bundle.check_name(name, str(info.get("sig") or "")):
        raise LaunchError(f"the job's {what} is not signed by the submitting home; refusing it")
    uri = info["uri"]
    storage.fetch(uri, dest, store=storage.store_for(uri, _storage_options()))
    return dest


def _unpack(archive: Path, dest: Path) -> list[tuple[str, bool, str]]:
    """Unzip ``archive`` into ``dest`` (no path out of it); ``(path, executable, sha256)``
    of every file, for ``bundle.tree_digest``."""
    import hashlib
    import zipfile

    entries = []
    root = dest.resolve()
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            target = (dest / info.filename).resolve()
            if not target.is_relative_to(root) or Path(info.filename).is_absolute():
                raise LaunchError(f"the job's folder has an entry outside it: {info.filename}")
            target.parent.mkdir(parents=True, exist_ok=True)
            data = zf.read(info)
            target.write_bytes(data)
            executable = bool((info.external_attr >> 16) & 0o111)
            os.chmod(target, 0o755 if executable else 0o644)
            entries.append((info.filename, executable, hashlib.sha256(data).hexdigest()))
    return entries


def stage_travel(spec: dict[str, Any], jobdir: JobDir) -> tuple[dict[str, Any], Path | None]:
    """The job's folder unpacked (its working directory, on ``sys.path``) and its
    requirements installed, before any worker starts; the spec with a script's or
    notebook's path in that folder. ``(spec, folder or None)``."""
    from .. import bundle

    spec = json.loads(json.dumps(spec))
    folder = None
    code = spec.get("code")
    if code:
        archive = _fetch_named("folder", code, jobdir.path / "code.zip")
        folder = jobdir.path / "code"
        entries = _unpack(archive, folder)
        folder.mkdir(parents=True, exist_ok=True)  # an empty folder travels as an empty zip
        if bundle.tree_digest(entries) != code["sha256"]:
            raise LaunchError("the job's folder does not match the name it was sent under")
        archive.unlink()
        entry = spec["entry"]
        if entry["kind"] in ("script", "notebook") and not Path(entry["target"]).is_absolute():
            entry["target"] = str(folder / entry["target"])
        print(f"nbscale: the job's folder: {len(entries)} files in {folder}", flush=True)
    wanted = spec.get("requirements_wheels")
    if wanted:
        import hashlib

        from .. import requirements

        archive = _fetch_named("requirements", wanted, jobdir.path / "requirements.zip")
        if hashlib.sha256(archive.read_bytes()).hexdigest() != wanted["sha256"]:
            raise LaunchError("the job's wheelhouse does not match the name it was sent under")
        where = jobdir.path / "requirements"
        _unpack(archive, where)
        command = requirements.install_command(where, bool(wanted.get("index")))
        if command:
            started = time.monotonic()
            proc = subprocess.run(command, capture_output=True, text=True)
            if proc.returncode != 0:
                said = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
                raise LaunchError(f"installing the job's requirements failed: {' / '.join(said)}")
            installed = len([c for c in command if c.endswith(".whl")])
            how = "from the index" if wanted.get("index") else f"{installed} wheels, offline"
            print(
                f"nbscale: requirements installed ({how}) in {time.monotonic() - started:.1f} s",
                flush=True,
            )
    return spec, folder


def _storage_options() -> dict[str, Any]:
    return {"endpoint_url": os.environ.get("NBSCALE_S3_ENDPOINT_URL") or None}


def _write_back(outputs: str, jobdir: JobDir, layout: dict[str, Any], record: dict) -> None:
    from .. import storage

    store = storage.store_for(outputs, _storage_options())
    base = outputs.rstrip("/")
    node_file = jobdir.path / f"node-{layout['node_rank']}.json"
    node_file.write_text(json.dumps(record, indent=1))
    results = jobdir.outputs / "results.zip"
    if results.exists():
        store.put_at(results, f"{base}/results.zip")
    executed = jobdir.path / "notebooks" / "rank-0.ipynb"  # a notebook job's, as rank 0 ran it
    if executed.exists():
        store.put_at(executed, f"{base}/notebooks/rank-0.ipynb")
    # the node record goes last: a reader that sees it knows the results are complete
    store.put_at(node_file, f"{base}/nodes/{layout['node_rank']}.json")


RECORD_LINE = "nbscale: node-record "
SM_FAILURE_FILE = "/opt/ml/output/failure"
MAX_TRACEBACK = 8000  # per error in the log line: a CloudWatch event holds 256 KB


def root_cause(record: dict[str, Any]) -> str | None:
    """A failed node's earliest rank error as one line (what ``nbscale status`` shows)."""
    errors = sorted(record.get("errors") or [], key=lambda e: e.get("time", 0))
    if errors:
        first = errors[0]
        message = first.get("message") or first.get("type") or "failed"
        if first.get("type") and not str(message).startswith(first["type"]):
            message = f"{first['type']}: {message}"
        return f"rank {first['rank']}: {message}" if first.get("rank") is not None else message
    if record.get("error"):
        return str(record["error"])
    if record.get("exit_code"):
        return f"node {record.get('node_rank', '?')} exited with code {record['exit_code']}"
    return None


def report_elsewhere(layout: dict[str, Any], record: dict[str, Any], out=None) -> None:
    """On SageMaker: the node's record on stdout (one line, for CloudWatch) and a failed
    node's root cause in ``/opt/ml/output/failure`` (SageMaker's FailureReason)."""
    if layout["platform"] != "sagemaker":
        return
    out = out or sys.stdout
    line = dict(record, node_rank=layout["node_rank"])
    line["errors"] = [
        {**e, "traceback": (e.get("traceback") or "")[-MAX_TRACEBACK:] or None}
        for e in record.get("errors") or []
    ]
    out.write(RECORD_LINE + json.dumps(line, separators=(",", ":"), default=str) + "\n")
    out.flush()
    cause = root_cause(line) if record.get("exit_code") else None
    failure = Path(os.environ.get("NBSCALE_SM_FAILURE_FILE", SM_FAILURE_FILE))
    if cause and failure.parent.is_dir():
        with contextlib.suppress(OSError):
            failure.write_text(cause[:1024])  # SageMaker keeps the first 1024 characters


def _worker_env(
    spec: dict[str, Any],
    job_id: str,
    jobdir: JobDir,
    layout: dict[str, Any],
    folder: Path | None = None,
) -> dict[str, str]:
    env = dict(os.environ)
    if folder is not None:  # sibling modules import, in the ranks and what they start
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(folder), env.get("PYTHONPATH", "")) if p
        )
    env.update({k: str(v) for k, v in (spec.get("env") or {}).items()})
    env["NBSCALE_JOB_ID"] = job_id
    env["NBSCALE_JOB_DIR"] = str(jobdir.path)
    env["PYTHONUNBUFFERED"] = "1"
    gpus = int(spec.get("gpus_per_proc") or 0)
    env["NBSCALE_DIST_BACKEND"] = "nccl" if gpus else "gloo"
    env["NBSCALE_GPUS_PER_PROC"] = str(gpus)
    env.setdefault("OMP_NUM_THREADS", "1")
    # the platform's folder (Kubeflow: on the checkpoint_volume PVC) outlives the pod
    checkpoint = (
        spec.get("checkpoint_dir")
        or os.environ.get("NBSCALE_CHECKPOINT_DIR")
        or (
            "/opt/ml/checkpoints"
            if layout["platform"] == "sagemaker"
            else str(jobdir.path / "ckpt")
        )
    )
    env["NBSCALE_CHECKPOINT_DIR"] = checkpoint
    for name in [k for k in env if k.startswith("PET_")]:
        del env[name]  # torchrun got them as arguments; its workers must not re-read them
    return env


def run(args: argparse.Namespace) -> int:
    spec = decode_spec(args.spec)
    jobdir = JobDir(_home() / "jobs" / args.job_id).make()
    layout = node_layout(spec)
    print(
        f"nbscale: job {args.job_id} node {layout['node_rank']}/{layout['nnodes']} "
        f"({layout['platform']}), {layout['nproc']} process(es) here",
        flush=True,
    )
    started = time.time()
    folder = None
    try:
        spec, folder = stage_travel(spec, jobdir)
        run_spec = stage_inputs(spec, args.bundle, jobdir)
        check_node(run_spec, layout)  # versions, GPUs and NCCL network, before any rank
    except Exception as exc:  # noqa: BLE001 - reported as the node's outcome, then exit 1
        message = f"{type(exc).__name__}: {exc}"
        print(f"nbscale: cannot start: {message}", file=sys.stderr, flush=True)
        record = {"exit_code": 1, "error": message, "errors": [], "started": started}
        if args.outputs:
            _write_back(args.outputs, jobdir, layout, record)
        report_elsewhere(layout, record)
        return 1
    jobdir.spec_file.write_text(json.dumps(run_spec))
    logs = RankLogs(jobdir)
    logs.start()
    proc = subprocess.Popen(
        torchrun_command(run_spec, layout, args.job_id),
        env=_worker_env(run_spec, args.job_id, jobdir, layout, folder),
        cwd=str(folder or jobdir.path),  # the job's folder: relative paths as in the kernel
    )

    def forward(signum, _frame):  # a platform stop (SIGTERM) reaches every rank
        proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    code = proc.wait()
    logs.finish()
    errors = jobdir.errors()
    record = {
        "exit_code": code,
        "node_rank": layout["node_rank"],
        "nnodes": layout["nnodes"],
        "errors": errors,
        "restarts": jobdir.restarts(),
        "started": started,
        "ended": time.time(),
    }
    if args.outputs:
        _write_back(args.outputs, jobdir, layout, record)
    report_elsewhere(layout, record)
    print(f"nbscale: node {layout['node_rank']} finished with exit code {code}", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nbscale.runtime.launch")
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--spec", required=True, help="the job spec, base64 JSON")
    parser.add_argument("--bundle", help="URI or path of the signed cell bundle")
    parser.add_argument("--outputs", help="URI or folder where results and node records go")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except LaunchError as exc:
        print(f"nbscale: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
