"""``%pipeline run|compile|status|runs [PATH]``: the CLI's pipeline commands inside a notebook.

PATH defaults to the notebook the kernel belongs to (save it first: the
pipeline is read from disk, as papermill would).
"""

from __future__ import annotations

import argparse
import os
import shlex
import time
from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class

from nbscale.errors import NbscaleError, SpecError
from nbscale.faces.options import typed_value

from .display import user_error

USAGE = (
    "%pipeline run [PATH] [-p NAME VALUE] [--only STEP] [--from STEP] [--no-cache] [--max-parallel N] "
    "[--detach] [--backend NAME] | %pipeline compile [PATH] --target kfp|sagemaker -o FILE | %pipeline status RUN | "
    "%pipeline runs"
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise SpecError("%pipeline", message, USAGE)


def parse(line: str) -> argparse.Namespace:
    parser = _Parser(prog="%pipeline", add_help=False)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    run = sub.add_parser("run", add_help=False)
    run.add_argument("path", nargs="?")
    run.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"))
    run.add_argument("--only", action="append")
    run.add_argument("--from", dest="from_step")
    run.add_argument("--no-cache", action="store_true")
    run.add_argument("--max-parallel", type=int)
    run.add_argument("--detach", action="store_true")
    run.add_argument("--backend")
    comp = sub.add_parser("compile", add_help=False)
    comp.add_argument("path", nargs="?")
    comp.add_argument("--target", default="kfp")
    comp.add_argument("-o", "--output")
    comp.add_argument("--image")
    status = sub.add_parser("status", add_help=False)
    status.add_argument("run")
    runs = sub.add_parser("runs", add_help=False)
    runs.add_argument("--limit", type=int, default=20)
    try:
        args = parser.parse_args(shlex.split(line))
    except ValueError as exc:
        raise SpecError("%pipeline", str(exc), USAGE) from exc
    if not args.command:
        raise SpecError("%pipeline", "needs a subcommand", USAGE)
    return args


def current_notebook(user_ns: dict[str, Any]) -> str:
    path = user_ns.get("__session__") or os.environ.get("JPY_SESSION_NAME")
    if not path or not str(path).endswith(".ipynb") or not os.path.exists(path):
        raise SpecError(
            "PATH",
            "is needed: this kernel does not know its notebook's path",
            "give it, e.g. %pipeline run pipeline.yaml",
        )
    return str(path)


class RunsList:
    def __init__(self, runs: list):
        self.runs = runs

    def _repr_mimebundle_(self, include=None, exclude=None):
        text = (
            "\n".join(f"{r.id}  {r.name}  {r.status}" for r in self.runs) or "no pipeline runs yet"
        )
        rows = "".join(
            f"<tr><td><code>{r.id}</code></td><td>{r.name}</td><td>{r.status}</td></tr>"
            for r in self.runs
        )
        return {
            "text/plain": text,
            "text/html": f"<table><tr><th>run</th><th>pipeline</th><th>status</th></tr>{rows}</table>",
        }


@magics_class
class PipelineMagics(Magics):
    @line_magic
    def pipeline(self, line: str) -> Any:
        """Run or compile a pipeline: %pipeline run|compile [PATH] (default: this notebook)."""
        try:
            args = parse(line)
            return getattr(self, f"handle_{args.command}")(args)
        except NbscaleError as exc:
            raise user_error(exc) from None

    def _path(self, args: argparse.Namespace) -> str:
        return args.path or current_notebook(self.shell.user_ns if self.shell else {})

    def handle_run(self, args: argparse.Namespace) -> Any:
        from IPython.display import display

        from nbscale.pipelines import start_run

        options = {
            k: v
            for k, v in {
                "only": args.only,
                "from_step": args.from_step,
                "no_cache": args.no_cache,
                "max_parallel": args.max_parallel,
            }.items()
            if v not in (None, False)
        }
        params = {n: typed_value(v) for n, v in (args.parameter or [])}
        # on SageMaker or Kubeflow too: the run is recorded here and followed in the background
        run = start_run(
            self._path(args),
            params,
            backend=args.backend or "local",
            detach=True,
            announce=lambda label, remote_id: print(f"{label} {remote_id}"),
            **options,
        )
        if args.detach:
            return run
        handle = display(run, display_id=True)
        try:
            while not run.terminal:
                time.sleep(0.5)
                run = run.refresh()
                handle.update(run)
        except KeyboardInterrupt:
            print(f"stopped following; run {run.id} goes on (%pipeline status {run.id})")
        handle.update(run)
        return None

    def handle_compile(self, args: argparse.Namespace) -> Any:
        from nbscale.pipelines import compile_pipeline, compile_targets

        path = self._path(args)
        targets = compile_targets()
        suffix = targets[args.target].compile_suffix if args.target in targets else ""
        output = args.output or os.path.splitext(path)[0] + suffix
        written = compile_pipeline(path, args.target, output, image=args.image)
        print(f"wrote {written}")
        return None

    def handle_status(self, args: argparse.Namespace) -> Any:
        from nbscale.pipelines import get_run

        return get_run(args.run)

    def handle_runs(self, args: argparse.Namespace) -> Any:
        from nbscale.pipelines import runs

        return RunsList(runs(limit=args.limit))
