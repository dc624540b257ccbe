"""``%deploy MODEL --name NAME``, ``%endpoints [--watch]``, ``%drift NAME``, ``%undeploy NAME``: thin calls into nbscale.endpoints."""

from __future__ import annotations

import argparse
import shlex
import time
from html import escape
from pathlib import Path
from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class

from nbscale.endpoints import Endpoint, deploy, endpoint, endpoints
from nbscale.errors import NbscaleError, SpecError
from nbscale.faces.deploy_options import add_sizing_options, sizing_options
from nbscale.faces.options import add_platform_options, parse_replicas, platform_options
from nbscale.faces.text import ago, show_dry_run

from .display import user_error
from .monitor_view import DriftView, MetricsWatch


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
    p.add_argument(
        "--baseline",
        help="training data (a notebook variable: numpy or pandas) or a baseline.json / "
        ".npy / .csv / .parquet file; turns on drift monitoring",
    )
    p.add_argument("--idle-ttl", help="scale to zero after this long without requests (e.g. 30m)")
    p.add_argument("--dry-run", action="store_true", help="print what the backend would send")
    add_platform_options(p)
    add_sizing_options(p)
    return p


def endpoints_parser() -> _Parser:
    p = _Parser(prog="%endpoints", description="List endpoints, or watch their metrics live.")
    p.add_argument("name", nargs="?", help="watch only this endpoint")
    p.add_argument("--watch", action="store_true", help="a live chart of the SageMaker metrics")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between looks")
    p.add_argument("--count", type=int, help="stop after this many looks (default: until Ctrl-C)")
    return p


def drift_parser() -> _Parser:
    p = _Parser(prog="%drift", description="Captured inputs of an endpoint against its baseline.")
    p.add_argument("name")
    p.add_argument("--window", default="1h")
    p.add_argument("--since")
    p.add_argument("--fdr", type=float, default=0.01)
    return p


def _baseline_arg(value: str | None, ns: dict[str, Any]) -> Any:
    """A notebook variable by name, else a file: a baseline JSON as is, data files read."""
    if value is None:
        return None
    if value in ns:
        return ns[value]
    path = Path(value)
    if path.suffix.lower() == ".json":
        return path
    if path.is_file():
        from nbscale.monitoring.baseline import load_data

        return load_data(path)[0]
    raise SpecError(
        "--baseline",
        f"{value!r} is neither a variable in the notebook nor a file",
        "give the training data's variable, e.g. --baseline X_train",
    )


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
            result = deploy(
                target,
                name=args.name,
                replicas=parse_replicas(args.replicas),
                max_batch_size=args.max_batch_size,
                max_batch_delay_ms=args.max_batch_delay_ms,
                port=args.port,
                backend=args.backend,
                capture_rate=args.capture_rate,
                baseline=_baseline_arg(args.baseline, ns),
                idle_ttl=args.idle_ttl,
                options={**platform_options(args), **sizing_options(args)},
                dry_run=args.dry_run,
            )
            if args.dry_run:  # exactly what would be sent on stdout, commentary on stderr
                show_dry_run(result, "dry run: nothing deployed")
                return None
            if result.rolled_back:
                raise NbscaleError(
                    f"endpoint {result.name}: {result.rolled_back}",
                    "see the alarm in CloudWatch, fix the model, and deploy again",
                )
            return result
        except _Help:
            return None
        except NbscaleError as exc:
            raise user_error(exc) from None

    @line_magic("endpoints")
    def endpoints_magic(self, line: str) -> Any:
        """List endpoints: %endpoints; live metrics: %endpoints --watch [NAME] [--count N]"""
        try:
            args = endpoints_parser().parse_args(shlex.split(line))
            if args.watch:
                return self._watch(args)
            eps = [endpoint(args.name)] if args.name else endpoints()
            for ep in eps:
                ep.refresh()
            return EndpointsTable(eps)
        except _Help:
            return None
        except NbscaleError as exc:
            raise user_error(exc) from None

    @staticmethod
    def _watch(args: argparse.Namespace) -> None:
        from IPython.display import display

        if args.interval <= 0 or (args.count is not None and args.count < 1):
            raise SpecError("%endpoints", "--interval must be > 0 and --count >= 1")
        eps = [endpoint(args.name)] if args.name else endpoints()
        view = MetricsWatch()
        handle = display(view, display_id=True)
        looks = 0
        try:
            while args.count is None or looks < args.count:
                for ep in eps:
                    try:
                        view.update(ep.name, ep.metrics())
                    except NbscaleError as exc:  # one endpoint down: say so, keep watching
                        view.update(ep.name, None, str(exc))
                handle.update(view)
                looks += 1
                if args.count is None or looks < args.count:
                    time.sleep(args.interval)
        except KeyboardInterrupt:
            pass  # Ctrl-C ends the watch; the last chart stays

    @line_magic("drift")
    def drift_magic(self, line: str) -> Any:
        """Drift of an endpoint's captured inputs: %drift NAME [--window 1h] [--since 24h]"""
        try:
            args = drift_parser().parse_args(shlex.split(line))
            report = endpoint(args.name).drift(window=args.window, since=args.since, fdr=args.fdr)
            return DriftView(report)
        except _Help:
            return None
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
