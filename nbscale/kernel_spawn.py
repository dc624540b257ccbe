"""A kernel's process started before jupyter_client is imported.

Starting a kernel through jupyter_client first imports it (about 50 ms), asyncio and the
kernelspec machinery; from a fresh process that is 0.08-0.1 s before the kernel's process
exists, and the kernel's own boot (about 0.5 s of imports) only begins then. A pipeline run's
first step waits for that boot. Here the process is started with the standard library and
jupyter_core's paths only, as jupyter_client's ``LocalProvisioner`` would start it, and a
jupyter_client manager takes it over afterwards (``kernel_transport.kernel_sockets``):

- the kernelspec is the one jupyter_client's manager finds in Jupyter's kernel folders
  (``jupyter_path("kernels")``: the first folder with ``NAME/kernel.json``, names compared in
  lower case, as ``kernel_transport.spec_manager`` looks first);
- only an ipykernel kernel (``-m ipykernel_launcher``) with the local provisioner, over IPC:
  its five sockets in a new 0700 folder (``kernel_transport``'s), the connection file beside
  them written by jupyter_core's ``secure_write`` (0600) with ports 1-5, a fresh random key
  and HMAC-SHA256 signatures, as ``jupyter_client.connect.write_connection_file`` writes one;
- the command is the spec's ``argv`` with ``{connection_file}`` (its real path), ``{prefix}``
  and ``{resource_dir}`` filled in, a bare ``python`` replaced by this interpreter, and ``~``
  expanded; a spec naming any other placeholder is left to jupyter_client;
- the environment is the one asked for, with the spec's ``env`` (``${VAR}`` filled in from
  it), ``PYTHONEXECUTABLE`` dropped for a Python kernel and ``JPY_PARENT_PID`` set to this
  process (the kernel exits when its parent does);
- its own session (``start_new_session``, so a signal reaches its process group), stdin a
  closed pipe, stdout and stderr this process's.

The manager that takes it over resolves the kernelspec itself and compares it with the one
used here (``started_by``); on any difference, and where this pyzmq has no IPC transport,
the process is killed and reaped, its folder removed, and the kernel started by jupyter_client
as before. Anything this module cannot start exactly so gives ``None``: the caller starts the
kernel the usual way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from .kernel_transport import AF_UNIX_PATH_MAX, private_folder, runs_ipykernel

PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_]+)\}")  # as jupyter_client's format_kernel_cmd reads them
PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


@dataclass
class Spec:
    """The parts of a kernel.json that decide how its process starts."""

    resource_dir: str
    argv: list[str]
    env: dict[str, str]
    language: str
    provisioner: str | None  # metadata.kernel_provisioner.provisioner_name


@dataclass
class Prespawned:
    """A kernel's process started here, not yet taken over by a jupyter_client manager."""

    kernel_name: str
    spec: Spec
    folder: str  # 0700: the sockets and the connection file
    connection_file: str
    ip: str  # the sockets' path prefix (``ip`` of an IPC connection)
    cwd: str
    env: dict[str, str] = field(repr=False)  # asked for (before the spec's); may hold secrets
    process: subprocess.Popen = field(repr=False)
    _discarded: bool = field(default=False, repr=False)

    def started_by(self, spec: Any) -> bool:
        """``spec`` (a jupyter_client ``KernelSpec``, as the manager resolved it) would have
        started this process as it was started."""
        return self.spec == Spec(
            resource_dir=spec.resource_dir,
            argv=list(spec.argv),
            env=dict(spec.env or {}),
            language=spec.language or "",
            provisioner=_provisioner(spec.metadata or {}),
        )

    def discard(self, keep_folder: bool = False) -> None:
        """Kill the process (and its session), reap it, and remove its folder, or with
        ``keep_folder`` only its sockets (a kernel started in its place uses the folder)."""
        if self._discarded:
            return
        self._discarded = True
        with contextlib.suppress(OSError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        if not keep_folder:
            shutil.rmtree(self.folder, ignore_errors=True)
            return
        for port in range(1, len(PORTS) + 1):
            with contextlib.suppress(OSError):
                os.unlink(f"{self.ip}-{port}")


def _provisioner(metadata: dict[str, Any]) -> str | None:
    chosen = metadata.get("kernel_provisioner")
    return chosen.get("provisioner_name") if isinstance(chosen, dict) else None


def find_spec(kernel_name: str) -> Spec | None:
    """The kernelspec jupyter_client's manager would find in Jupyter's kernel folders; None where
    there is none (jupyter_client then looks further, in IPython's folders and ipykernel's own)."""
    from jupyter_core.paths import jupyter_path

    wanted = kernel_name.lower()
    for folder in jupyter_path("kernels"):
        with contextlib.suppress(OSError):
            for name in os.listdir(folder):
                path = os.path.join(folder, name)
                if name.lower() == wanted and os.path.isfile(os.path.join(path, "kernel.json")):
                    return _read_spec(path)
    return None


def _read_spec(resource_dir: str) -> Spec | None:
    try:
        with open(os.path.join(resource_dir, "kernel.json"), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None  # jupyter_client says what is wrong with it
    if not isinstance(data, dict):
        return None
    argv, env = data.get("argv"), data.get("env") or {}
    metadata = data.get("metadata") or {}
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        return None
    if not isinstance(env, dict) or not isinstance(metadata, dict):
        return None
    return Spec(
        resource_dir=resource_dir,
        argv=argv,
        env={str(k): str(v) for k, v in env.items()},
        language=str(data.get("language") or ""),
        provisioner=_provisioner(metadata),
    )


def _startable(spec: Spec) -> bool:
    """An ipykernel kernel (it binds ``ipc://`` addresses) with the local provisioner, whose
    command names no placeholder but the connection file, the prefix and its folder."""
    names = {m for arg in spec.argv for m in PLACEHOLDER.findall(arg)}
    return (
        runs_ipykernel(spec.argv)
        and spec.provisioner in (None, "local-provisioner")
        and names <= {"connection_file", "prefix", "resource_dir"}
    )


def _command(spec: Spec, connection_file: str) -> list[str]:
    values = {
        "connection_file": os.path.realpath(connection_file),
        "prefix": sys.prefix,
        "resource_dir": spec.resource_dir,
    }
    cmd = [PLACEHOLDER.sub(lambda m: values[m.group(1)], arg) for arg in spec.argv]
    major, minor = sys.version_info[:2]
    if cmd[0] in {"python", f"python{major}", f"python{major}.{minor}"}:
        cmd[0] = sys.executable
    return [os.path.expanduser(arg) for arg in cmd]


def _environment(spec: Spec, env: dict[str, str]) -> dict[str, str]:
    from string import Template

    final = dict(env)
    final.update({k: Template(v).safe_substitute(env) for k, v in spec.env.items()})
    if spec.language.lower().startswith("python"):
        final.pop("PYTHONEXECUTABLE", None)
    final["JPY_PARENT_PID"] = str(os.getpid())
    return final


def _write_connection_file(path: str, ip: str, kernel_name: str, env: dict[str, str]) -> None:
    from jupyter_core.paths import secure_write

    info: dict[str, Any] = dict(zip(PORTS, range(1, len(PORTS) + 1), strict=True))
    info.update(
        ip=ip,
        key=secrets.token_hex(32),
        transport="ipc",
        signature_scheme="hmac-sha256",
        kernel_name=kernel_name,
        jupyter_session=env.get("JPY_SESSION_NAME", ""),
    )
    with secure_write(path) as f:  # 0600, checked
        f.write(json.dumps(info, indent=2))
    folder = os.path.dirname(path)
    os.chmod(folder, os.stat(folder).st_mode | stat.S_ISVTX)  # only the owner removes its files


def spawn(kernel_name: str, cwd: str, env: dict[str, str]) -> Prespawned | None:
    """Start ``kernel_name``'s process in ``cwd`` with ``env`` now; None where it must be
    started by jupyter_client instead (see the module's notes). Never raises for a kernel it
    cannot start: the usual start reports the problem."""
    if sys.platform == "win32":
        return None  # no IPC transport there
    spec = find_spec(kernel_name)
    if spec is None or not _startable(spec):
        return None
    folder, _ = private_folder(AF_UNIX_PATH_MAX)
    if folder is None:
        return None
    try:
        connection_file = os.path.join(folder, "kernel.json")
        ip = os.path.join(folder, "kernel")
        _write_connection_file(connection_file, ip, kernel_name, env)
        process = subprocess.Popen(
            _command(spec, connection_file),
            stdin=subprocess.PIPE,
            cwd=cwd,
            env=_environment(spec, env),
            start_new_session=True,
        )
    except Exception:  # noqa: BLE001 - jupyter_client's own start says what is wrong
        shutil.rmtree(folder, ignore_errors=True)
        return None
    assert process.stdin is not None
    process.stdin.close()  # as jupyter_client's launcher: the kernel never reads ours
    return Prespawned(kernel_name, spec, folder, connection_file, ip, cwd, dict(env), process)
