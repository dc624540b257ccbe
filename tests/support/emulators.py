"""Local stand-ins for the outside world: a moto server for AWS, and "containers" that are
processes with their own home and only what a platform would give them."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

# a credential no file, log or object may ever contain (the tests grep for it)
PLANTED_SECRET = "nbscalePLANTEDsecretKEY0123456789abcdef"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIANBSCALETESTKEY01",
    "AWS_SECRET_ACCESS_KEY": PLANTED_SECRET,
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server():
    """A moto server on 127.0.0.1 (S3, Secrets Manager, SageMaker...); yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the moto server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def container_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a fresh container: PATH, its own home, nothing of ours."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "NBSCALE_HOME": str(home / ".nbscale"),
        "PYTHONUNBUFFERED": "1",
        "LANG": "C.UTF-8",
        "GLOO_SOCKET_IFNAME": "lo",
    }
    for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "PYTHONPATH"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    env.update(extra)
    return env


def mount_secret(path: Path, document: str) -> Path:
    """What a Kubernetes Secret volume with defaultMode 0400 leaves in the pod."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document)
    os.chmod(path, 0o400)
    return path


def grep_tree(root: Path, *needles: str) -> list[str]:
    """Files under ``root`` that contain any needle (bytes, any encoding we write)."""
    hits = []
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        for needle in needles:
            if needle and needle.encode() in data:
                hits.append(f"{path}: {needle[:8]}...")
    return hits


def kubernetes_secret_volume(folder: Path, files: dict[str, str], mode: int = 0o644) -> Path:
    """A Secret volume as the kubelet writes it: the data in a timestamped folder, ``..data``
    linking to it, and each key a link through ``..data`` (mode 0644 unless defaultMode says
    otherwise, as with KFP's secret volumes)."""
    stamp = folder / "..2026_12_01_00_00_00.000000001"
    stamp.mkdir(parents=True)
    for name, text in files.items():
        (stamp / name).write_text(text)
        os.chmod(stamp / name, mode)
    (folder / "..data").symlink_to(stamp.name)
    for name in files:
        (folder / name).symlink_to(f"..data/{name}")
    return folder
