"""Ports on 127.0.0.1 for the servers local jobs and endpoints start a moment later.

A port found free by binding port 0 comes from the kernel's ephemeral range, the range
every outgoing connection also takes its local port from. Between choosing such a port and
the server binding it (torchrun's rendezvous store starts a second or more later, longer on a
busy machine), any connection made on the machine, a job's own ranks connecting to their
store among them, may be given it, and the server then fails with EADDRINUSE. So ports are
chosen outside the ephemeral range (``/proc/sys/net/ipv4/ip_local_port_range``), where no
connection is given a port it did not ask for, at random, never one another nbscale job of
this home holds (the caller passes those), and only if it can be bound now.
"""

from __future__ import annotations

import random
import socket

# below the ephemeral range; above the ports of well-known services
LOWEST = 20000
_FALLBACK_EPHEMERAL = (32768, 60999)  # Linux's default, where /proc cannot be read


def port_free(port: int) -> bool:
    """Whether a server could bind ``port`` on 127.0.0.1 now (TIME_WAIT of old connections is
    no owner)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(v) for v in f.read().split())
        return low, high
    except (OSError, ValueError):
        return _FALLBACK_EPHEMERAL


def quiet_ranges() -> list[range]:
    """The port ranges no outgoing connection is given a port from."""
    low, high = ephemeral_range()
    ranges = []
    if low > LOWEST + 100:
        ranges.append(range(LOWEST, low))
    if high < 65535 - 100:
        ranges.append(range(high + 1, 65536))
    return ranges


def pick_port(taken: set[int] | frozenset[int] = frozenset(), tries: int = 200) -> int:
    """A port that is free now, outside the ephemeral range and not in ``taken``; where the
    ephemeral range leaves no room (set to cover every port), one the kernel picks."""
    ranges = quiet_ranges()
    if ranges:
        rng = random.SystemRandom()
        for _ in range(tries):
            chosen = rng.choice(rng.choice(ranges))
            if chosen not in taken and port_free(chosen):
                return chosen
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
