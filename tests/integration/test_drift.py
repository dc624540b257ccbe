"""Drift baselines through the real nbscale CLI: npy, csv and parquet files, one-line errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nbscale.monitoring.baseline import Baseline, load_data


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".parquet"])
def test_baseline_cli_reads_npy_csv_parquet(tmp_path, nbscale_cli, suffix):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(500, 3)), columns=["a", "b", "c"])
    path = tmp_path / f"train{suffix}"
    if suffix == ".npy":
        np.save(path, frame.to_numpy())
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    out = tmp_path / "baseline.json"
    proc = nbscale_cli("baseline", str(path), "-o", str(out), "--bins", "8", check=True)
    assert "3 features" in proc.stdout and "500 rows" in proc.stdout
    b = Baseline.load(out)
    assert b.bins == 8 and b.rows == 500
    assert b.names == (["f0", "f1", "f2"] if suffix == ".npy" else ["a", "b", "c"])
    matrix, _ = load_data(path)
    assert matrix.shape == (500, 3)


def test_baseline_cli_errors_are_one_line(tmp_path, nbscale_cli):
    (tmp_path / "x.txt").write_text("1,2")
    proc = nbscale_cli("baseline", str(tmp_path / "x.txt"), "-o", str(tmp_path / "b.json"))
    assert proc.returncode == 2 and "unknown format .txt" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b.json").exists()
    proc = nbscale_cli("baseline", str(tmp_path / "missing.npy"), "-o", str(tmp_path / "b.json"))
    assert proc.returncode == 2 and "no file" in proc.stderr
