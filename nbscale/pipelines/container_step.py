"""The entry point of one step inside a container (SageMaker Processing, or any image).

    python -m nbscale.pipelines.container_step --code DIR --outputs DIR --executed DIR \
        [--input PRODUCER=DIR ...] [--param NAME VALUE ...] --types JSON

``DIR`` under ``--code`` holds ``step.ipynb`` (inputs and outputs left as
placeholders) and the local modules it imports. Instead of ``--code``, a KFP container
component passes them as text, its input parameters: ``--notebook TEXT --modules JSON``
(``{relative path: source}``), with ``--in PRODUCER DIR`` for each upstream folder. Parameter values arrive as
strings (that is how SageMaker passes them) and are typed back with
``--types``. papermill executes the notebook; the executed notebook is written
even when a cell fails, and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

from .stepbook import IN, OUT


def typed(value: str, kind: str):
    if kind == "bool":
        return value.strip().lower() in ("true", "1", "yes")
    if kind == "int":
        return int(float(value))
    if kind == "float":
        return float(value)
    if kind in ("list", "dict"):
        return json.loads(value)
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nbscale-step")
    code = parser.add_mutually_exclusive_group(required=True)
    code.add_argument("--code")
    code.add_argument("--notebook", help="the step notebook's JSON (with --modules)")
    parser.add_argument("--modules", default="{}", help="JSON: {relative path: source}")
    parser.add_argument("--outputs", required=True)
    parser.add_argument("--executed", required=True)
    parser.add_argument("--input", action="append", default=[], metavar="PRODUCER=DIR")
    parser.add_argument("--in", dest="inputs", nargs=2, action="append", default=[],
                        metavar=("PRODUCER", "DIR"))  # fmt: skip
    parser.add_argument("--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("--types", default="{}")
    parser.add_argument("--timeout", type=int)
    args = parser.parse_args(argv)

    from ..kernel_transport import execute_notebook

    types = json.loads(args.types)
    params = {name: typed(value, types.get(name, "str")) for name, value in args.param}
    if args.code:
        with open(os.path.join(args.code, "step.ipynb")) as fh:
            source = fh.read()
    else:
        source = args.notebook
    pairs = [pair.partition("=")[::2] for pair in args.input] + [tuple(p) for p in args.inputs]
    for producer, directory in pairs:
        source = source.replace(IN.format(producer), json.dumps(directory)[1:-1])
    os.makedirs(args.outputs, exist_ok=True)
    os.makedirs(args.executed, exist_ok=True)
    source = source.replace(OUT, json.dumps(args.outputs)[1:-1])
    work = tempfile.mkdtemp(prefix="nbscale-step-")
    if args.code:
        shutil.copytree(args.code, work, dirs_exist_ok=True)
    for relpath, text in json.loads(args.modules).items():  # the local modules it imports
        target = os.path.join(work, relpath)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as fh:
            fh.write(text)
    path = os.path.join(work, "step.ipynb")
    with open(path, "w") as fh:
        fh.write(source)
    try:
        execute_notebook(  # the kernel on Unix sockets in a private folder, not on TCP
            path,
            os.path.join(args.executed, "step.ipynb"),
            parameters=params,
            kernel_name="python3",
            progress_bar=False,
            cwd=work,
            execution_timeout=args.timeout,
        )
    except Exception as exc:  # noqa: BLE001 - the executed notebook holds the traceback
        print(f"nbscale: step failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
