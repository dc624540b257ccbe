"""``%deploy MODEL --name NAME``, ``%endpoints``, ``%undeploy NAME``: thin calls into nbscale.endpoints."""

from __future__ import annotations

import argparse
import shlex
from html import escape
from pathlib import Path
from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class

from nbscale.cli.endpoints_cmd import parse_replicas
from nbscale.cli.output import ago
from nbscale.endpoints import Endpoint, deploy, endpoint, endpoints
from nbscale.errors import NbscaleError, SpecError

from .display import user_error


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise SpecError(self.prog, message, f"see {self.prog} --help")

    def exit(self, status: int = 0, message: str | None = None):  # type: ignore[override]
        raise _Help()


class _Help(Exception):
    pass


def deploy_parser() -> _Parser:
    p = _Parser(
        prog="%deploy",
        description="Deploy a model (a variable or an artifact directory) as an endpoint.",
    )
    p.add_argument(
        "model",
        help="a torch.nn.Module or object with predict() in the notebook, or an artifact directory",
    )
    p.add_argument("--name", required=True)
    p.add_argument("--replicas", default="1:1", metavar="MIN:MAX")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-batch-delay-ms", type=float, default=2.0)
    p.add_argument("--port", type=int)
    p.add_argument("--backend")
    p.add_argument("--capture-rate", type=float)
    return p


class EndpointsTable:
    def __init__(self, eps: list[Endpoint]):
        self.rows = [ep.to_dict() for ep in eps]

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        if not self.rows:
            text = "no endpoints: deploy one with %deploy MODEL --name NAME"
            return {"text/plain": text, "text/html": f"<p>{escape(text)}</p>"}
        heads = ["name", "backend", "url", "status", "replicas", "created"]
        cells = [
            [
                d["name"],
                d["backend"],
                d["url"],
                d["status"],
                f"{d['replicas']['current']} ({d['replicas']['min']}..{d['replicas']['max']})",
                ago(d["created"]),
            ]
            for d in self.rows
        ]
        text = "\n".join("  ".join(str(c) for c in row) for row in [heads, *cells])
        html = (
            "<table><tr>"
            + "".join(f"<th>{h}</th>" for h in heads)
            + "</tr>"
            + "".join(
                "<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>"
                for row in cells
            )
            + "</table>"
        )
        return {"text/plain": text, "text/html": html}


@magics_class
class DeployMagics(Magics):
    @line_magic("deploy")
    def deploy_magic(self, line: str) -> Any:
        """Deploy a model: %deploy model --name digits [--replicas 0:2] [--max-batch-size 32] [--port 8085]"""
        try:
            args = deploy_parser().parse_args(shlex.split(line))
            ns = self.shell.user_ns if self.shell else {}
            if args.model in ns:
                target = ns[args.model]
            elif Path(args.model).is_dir():
                target = args.model
            else:
                raise SpecError(
                    "%deploy",
                    f"{args.model!r} is neither a variable in the notebook nor a directory",
                    "give the name of a trained model variable or an artifact directory",
                )
            return deploy(
                target,
                name=args.name,
                replicas=parse_replicas(args.replicas),
                max_batch_size=args.max_batch_size,
                max_batch_delay_ms=args.max_batch_delay_ms,
                port=args.port,
                backend=args.backend,
                capture_rate=args.capture_rate,
            )
        except _Help:
            return None
        except NbscaleError as exc:
            raise user_error(exc) from None

    @line_magic("endpoints")
    def endpoints_magic(self, line: str) -> Any:
        """List endpoints: %endpoints"""
        try:
            eps = endpoints()
            for ep in eps:
                ep.refresh()
            return EndpointsTable(eps)
        except NbscaleError as exc:
            raise user_error(exc) from None

    @line_magic("undeploy")
    def undeploy_magic(self, line: str) -> Any:
        """Stop an endpoint and every process of it: %undeploy NAME"""
        try:
            name = line.strip()
            if not name:
                raise SpecError("%undeploy", "needs an endpoint name", "e.g. %undeploy digits")
            endpoint(name).delete()
            print(f"endpoint {name} undeployed")
            return None
        except NbscaleError as exc:
            raise user_error(exc) from None
