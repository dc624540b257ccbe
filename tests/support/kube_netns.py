"""Pods on their own network: one network namespace per node, joined by veth pairs.

Where the machine allows it (root and iproute2), ``node_network(n, forward_port)`` makes
a "switch" namespace with a bridge and ``n`` node namespaces, each with an ``eth0``
(10.77.X.(i+1)/24) cabled to the bridge, so torch's rendezvous between the nodes crosses
a real (virtual) network instead of loopback. Nothing is added to this machine's own
network namespace: the one service the pods need from it (the S3 emulator on
127.0.0.1:``forward_port``) is reached through a forwarder listening on the same address
inside each node namespace and a Unix socket (Unix sockets do not belong to a network
namespace). Everything is removed on exit.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FORWARDER = Path(__file__).with_name("netns_forward.py")


def available() -> str | None:
    """None when network namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    name = f"nbs-probe-{secrets.token_hex(3)}"
    try:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"cannot make a network namespace: {exc}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


@dataclass
class Node:
    netns: str
    address: str

    def wrap(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _start(argv: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    if "ready" not in line:
        proc.kill()
        raise RuntimeError(f"forwarder did not start: {line}{proc.stdout.read()}")
    return proc


@contextlib.contextmanager
def node_network(n: int, forward_port: int) -> Iterator[list[Node]]:
    tag = secrets.token_hex(3)
    subnet = 10 + int(tag[:2], 16) % 200
    switch = f"nbs-{tag}-sw"
    nodes = [Node(f"nbs-{tag}-n{i}", f"10.77.{subnet}.{i + 1}") for i in range(n)]
    made: list[str] = []
    procs: list[subprocess.Popen] = []
    tmp = Path(tempfile.mkdtemp(prefix="nbs-netns-"))
    sock = str(tmp / "s3.sock")
    try:
        for ns in [switch, *(node.netns for node in nodes)]:
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for i, node in enumerate(nodes):
            # both ends are made in the node's namespace, then one end moves to the switch
            _ip("-n", node.netns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}")
            _ip("-n", node.netns, "link", "set", f"p{i}", "netns", switch)
            _ip("-n", node.netns, "addr", "add", f"{node.address}/24", "dev", "eth0")
            _ip("-n", node.netns, "link", "set", "eth0", "up")
            _ip("-n", switch, "link", "set", f"p{i}", "master", "br0")
            _ip("-n", switch, "link", "set", f"p{i}", "up")
        procs.append(
            _start(
                [
                    sys.executable,
                    str(FORWARDER),
                    "unix-to-tcp",
                    sock,
                    "127.0.0.1",
                    str(forward_port),
                ]
            )
        )
        for node in nodes:
            procs.append(
                _start(
                    node.wrap(
                        [
                            sys.executable,
                            str(FORWARDER),
                            "tcp-to-unix",
                            "127.0.0.1",
                            str(forward_port),
                            sock,
                        ]
                    )
                )
            )
        yield nodes
    finally:
        for proc in procs:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.poll() is None:
                proc.kill()
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        with contextlib.suppress(OSError):
            os.unlink(sock)
            tmp.rmdir()
