"""The step notebooks carry the format version whose validator a runner compiles early."""

from __future__ import annotations


def test_the_step_notebooks_carry_the_format_version_that_is_compiled(tmp_path):
    import nbformat

    from nbscale.pipelines import load
    from nbscale.pipelines.stepbook import NBFORMAT, NBFORMAT_MINOR, build, write

    book = tmp_path / "one.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, book)
    (tmp_path / "pipeline.yaml").write_text(
        "name: one\nsteps:\n  - name: one\n    notebook: one.ipynb\n"
    )
    pipeline = load(str(tmp_path / "pipeline.yaml"))
    built = build(pipeline, pipeline.steps["one"], {}, str(tmp_path / "out"))
    assert (built["nbformat"], built["nbformat_minor"]) == (NBFORMAT, NBFORMAT_MINOR)
    written = write(built, tmp_path / "step.ipynb")
    read = nbformat.read(written, as_version=NBFORMAT)  # as papermill reads it: validated
    assert (read.nbformat, read.nbformat_minor) == (NBFORMAT, NBFORMAT_MINOR)
    nbformat.validate(read)
