"""A real ipykernel driven the way JupyterLab drives it: execute a cell, collect what it shows."""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Reply:
    status: str
    text: str = ""
    error: dict | None = None
    mimes: list[str] = field(default_factory=list)
    widget_values: list[str] = field(default_factory=list)
    streams: dict[str, str] = field(default_factory=dict)  # "stdout"/"stderr" -> their text

    @property
    def error_text(self) -> str:
        if not self.error:
            return ""
        return "\n".join(
            [f"{self.error['ename']}: {self.error['evalue']}", *self.error["traceback"]]
        )


class Kernel:
    """A real ipykernel in the test's directory and ``$NBSCALE_HOME``."""

    def __init__(self, cwd: Path, **env: str):
        from jupyter_client.manager import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(cwd), env={**os.environ, "NBSCALE_PROGRESS": "text", **env})
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 180) -> Reply:
        reply = Reply("")
        parts: list[str] = []

        def hook(msg):
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                parts.append(content["text"])
                name = content["name"]
                reply.streams[name] = reply.streams.get(name, "") + content["text"]
            elif kind in ("execute_result", "display_data"):
                reply.mimes.extend(content["data"])
                parts.append(content["data"].get("text/plain", "") + "\n")
            elif kind == "error":
                reply.error = content
            elif kind in ("comm_open", "comm_msg"):
                state = (content.get("data") or {}).get("state") or {}
                if isinstance(state.get("value"), str):
                    reply.widget_values.append(state["value"])

        msg = self.kc.execute_interactive(textwrap.dedent(code), output_hook=hook, timeout=timeout)
        reply.status = msg["content"]["status"]
        reply.text = "".join(parts)
        return reply

    def ok(self, code: str, timeout: float = 180) -> Reply:
        reply = self.run(code, timeout)
        assert reply.status == "ok", f"cell failed:\n{reply.text}\n{reply.error_text}"
        return reply

    def start(self, code: str) -> str:
        """Send a cell without waiting for it."""
        return self.kc.execute(textwrap.dedent(code))

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)
