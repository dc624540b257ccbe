"""``remove_noted``: the supervisor removes only kernel folders nbscale made, whatever a note says."""

from __future__ import annotations

import os

from nbscale.kernel_transport import PREFIX, remove_noted


def test_only_nbscale_kernel_folders_named_by_notes_are_removed(tmp_path):
    notes = tmp_path / "kernels"
    notes.mkdir()
    ours = tmp_path / f"{PREFIX}abcd1234"
    ours.mkdir()
    (ours / "kernel.json").write_text("{}")
    other = tmp_path / "precious"
    other.mkdir()
    (other / "data").write_text("keep")
    link = tmp_path / f"{PREFIX}link"
    os.symlink(other, link)
    (notes / "rank-0").write_text(str(ours))
    (notes / "rank-1").write_text(str(other))  # a note pointing elsewhere
    (notes / "rank-2").write_text(str(link))  # a folder-named link to elsewhere
    (notes / "rank-3").write_text(f"{PREFIX}relative")  # not an absolute path
    (notes / "rank-4").write_text(str(tmp_path / f"{PREFIX}gone"))  # removed already

    assert remove_noted(str(notes)) == [str(ours)]
    assert not ours.exists()
    assert (other / "data").read_text() == "keep" and link.is_symlink()
    assert list(notes.iterdir()) == []  # the notes go with the folders
    assert remove_noted(str(tmp_path / "no-such-folder")) == []
