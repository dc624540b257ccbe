"""``nbscale quickstart``: run examples/quickstart.ipynb headless (papermill) and report.

The notebook trains a model defined in the notebook on two processes with
``%%train`` and evaluates it back in the kernel; this command says where the
executed notebook is and what accuracy it reached.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .. import paths
from ..errors import NbscaleError, NotFound

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"


def summary_of(notebook: Path) -> dict:
    """The JSON the notebook's ``result`` cell displays."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if "result" in cell.get("metadata", {}).get("tags", []):
            for output in cell.get("outputs", []):
                data = output.get("data", {}).get("application/json")
                if data:
                    return dict(data)
    raise NbscaleError(f"{notebook} has no result cell output", "did the notebook run to the end?")


def cmd_quickstart(args: argparse.Namespace) -> int:
    from papermill.exceptions import PapermillExecutionError

    from ..kernel_transport import execute_notebook

    source = Path(args.notebook).resolve() if args.notebook else EXAMPLE
    if not source.is_file():
        raise NotFound(
            f"the quickstart notebook is not at {source}",
            "run from a checkout of nbscale, or give --notebook PATH",
        )
    out_dir = paths.home() / "quickstart"
    output = (
        Path(args.output).resolve()
        if args.output
        else out_dir / f"quickstart-{time.strftime('%Y%m%d-%H%M%S')}.ipynb"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"nbscale: running {source} with papermill (2 processes; seconds to a minute)...",
        file=sys.stderr,
        flush=True,
    )
    started = time.monotonic()
    try:
        execute_notebook(  # the kernel on Unix sockets in a private folder, not on TCP
            str(source),
            str(output),
            kernel_name=args.kernel,
            cwd=str(source.parent),
            progress_bar=sys.stderr.isatty(),
            log_output=False,
        )
    except PapermillExecutionError as exc:
        raise NbscaleError(
            f"the quickstart notebook failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}",
            f"the executed notebook is at {output}",
        ) from None
    summary = summary_of(output)
    print(f"executed notebook: {output}")
    print(
        f"accuracy: {summary['accuracy']:.4f} (final training loss {summary['final_loss']:.4f}, "
        f"{summary['epochs']} epochs, {time.monotonic() - started:.0f} s)"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart", help="train the quickstart notebook's model on 2 processes with %%%%train"
    )
    p.add_argument(
        "--output",
        metavar="PATH",
        help="where to write the executed notebook (default: $NBSCALE_HOME/quickstart/)",
    )
    p.add_argument("--notebook", metavar="PATH", help="another copy of quickstart.ipynb")
    p.add_argument(
        "--kernel", default="python3", help="Jupyter kernel to run it in (default python3)"
    )
    p.set_defaults(func=cmd_quickstart)
