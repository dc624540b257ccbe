"""A drift baseline from training data: per-feature quantile bins and summary statistics.

    b = Baseline.from_data(X_train)          # numpy array (rows x features, or rows x ...) or DataFrame
    b.save("baseline.json"); Baseline.load("baseline.json")

For every feature it keeps the interior bin edges (the baseline's own
quantiles, taken at data values so that no bin is empty), the share of the
training rows in each bin, mean / std / min / max / percentiles, the share of
missing values, and a uniform sample of the values (``reference_size``) that
the two-sample KS test compares windows against.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SpecError
from ..words import count, plural

FORMAT_VERSION = 1
DEFAULT_BINS = 10
DEFAULT_REFERENCE_SIZE = 2000
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


@dataclass
class FeatureBaseline:
    name: str
    edges: list[float]  # interior edges; bin i holds edges[i-1] <= x < edges[i]
    proportions: list[float]  # len(edges) + 1 shares of the baseline rows
    count: int  # rows with a value (not NaN)
    missing: float
    mean: float
    std: float
    min: float
    max: float
    percentiles: dict[str, float]
    reference: list[float] = field(repr=False)

    def bin_counts(self, values: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(np.asarray(self.edges, dtype=float), values, side="right")
        return np.bincount(idx, minlength=len(self.edges) + 1)


@dataclass
class Baseline:
    features: list[FeatureBaseline]
    rows: int
    bins: int
    created: float
    source: str = ""
    version: int = FORMAT_VERSION

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    # -- building --------------------------------------------------------------
    @classmethod
    def from_data(
        cls,
        data: Any,
        bins: int = DEFAULT_BINS,
        reference_size: int = DEFAULT_REFERENCE_SIZE,
        names: list[str] | None = None,
        seed: int = 0,
        source: str = "",
    ) -> Baseline:
        if not isinstance(bins, int) or bins < 2:
            raise SpecError("bins", f"must be an integer >= 2, got {bins!r}")
        if not isinstance(reference_size, int) or reference_size < 50:
            raise SpecError("reference_size", f"must be an integer >= 50, got {reference_size!r}")
        matrix, found_names = as_matrix(data)
        names = names or found_names
        if len(names) != matrix.shape[1]:
            raise SpecError(
                "names", f"{len(names)} names for {matrix.shape[1]} features", "give one per column"
            )
        if matrix.shape[0] < 2 * bins:
            raise SpecError(
                "data",
                f"{count(matrix.shape[0], 'row')} {plural('is', matrix.shape[0])} too few for a baseline "
                f"with {count(bins, 'bin')}",
                f"give at least {2 * bins} rows (a few thousand make a steady baseline)",
            )
        rng = np.random.default_rng(seed)
        levels = np.arange(1, bins) / bins
        feats = []
        for j, name in enumerate(names):
            col = matrix[:, j]
            ok = col[~np.isnan(col)]
            if ok.size == 0:
                raise SpecError("data", f"feature {name!r} has no values (all missing)")
            # quantiles at data values: every bin between two edges holds at least the lower edge
            edges = np.unique(np.quantile(ok, levels, method="inverted_cdf"))
            edges = edges[edges > ok.min()]  # a bin below the minimum would be empty
            counts = np.bincount(np.searchsorted(edges, ok, side="right"), minlength=len(edges) + 1)
            ref = ok if ok.size <= reference_size else rng.choice(ok, reference_size, replace=False)
            pct = np.percentile(ok, PERCENTILES)
            feats.append(
                FeatureBaseline(
                    name=str(name),
                    edges=[float(e) for e in edges],
                    proportions=[float(c) / ok.size for c in counts],
                    count=int(ok.size),
                    missing=float(1 - ok.size / col.size),
                    mean=float(ok.mean()),
                    std=float(ok.std()),
                    min=float(ok.min()),
                    max=float(ok.max()),
                    percentiles={f"p{p}": float(v) for p, v in zip(PERCENTILES, pct, strict=True)},
                    reference=[float(f"{v:.7g}") for v in np.sort(ref)],
                )
            )
        return cls(feats, int(matrix.shape[0]), bins, time.time(), source)

    # -- files -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Baseline:
        try:
            if data.get("version") != FORMAT_VERSION:
                raise ValueError(f"format version {data.get('version')!r}")
            feats = [FeatureBaseline(**f) for f in data["features"]]
            rest = {k: data[k] for k in ("rows", "bins", "created", "source", "version")}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SpecError(
                "baseline",
                f"not an nbscale baseline ({exc})",
                "make one with: nbscale baseline DATA -o baseline.json",
            ) from None
        return cls(feats, **rest)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict()))
        tmp.replace(path)  # never a half-written baseline
        return path

    @classmethod
    def load(cls, path: str | Path) -> Baseline:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise SpecError(
                "baseline",
                f"no baseline file {str(path)!r}",
                "make one with: nbscale baseline DATA -o baseline.json",
            ) from None
        except json.JSONDecodeError as exc:
            raise SpecError("baseline", f"{path} is not JSON: {exc}") from None
        return cls.from_dict(data)

    def summary(self) -> list[dict[str, Any]]:
        return [
            {
                "feature": f.name,
                "mean": f.mean,
                "std": f.std,
                "min": f.min,
                "max": f.max,
                "bins": len(f.proportions),
                "missing": f.missing,
            }
            for f in self.features
        ]


def as_matrix(data: Any) -> tuple[np.ndarray, list[str]]:
    """Rows x features as float64, and the feature names (columns of a frame, else f0, f1, ...)."""
    names: list[str] | None = None
    if hasattr(data, "columns") and hasattr(data, "dtypes"):  # a pandas DataFrame
        bad = [str(c) for c, t in data.dtypes.items() if t.kind not in "biuf"]
        if bad:
            raise SpecError(
                "data",
                f"columns {', '.join(bad[:5])} are not numeric",
                "drop or encode them before making a baseline",
            )
        names = [str(c) for c in data.columns]
        data = data.to_numpy(dtype=float)
    elif hasattr(data, "detach"):  # a torch tensor
        data = data.detach().cpu().numpy()
    try:
        arr = np.asarray(data, dtype=float)
    except (TypeError, ValueError) as exc:
        raise SpecError(
            "data", f"cannot read it as numbers: {exc}", "give a numeric array or frame"
        ) from None
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise SpecError("data", "it holds no rows", "give rows x features")
    arr = arr.reshape(arr.shape[0], -1)
    if np.isinf(arr).any():
        raise SpecError("data", "it holds infinite values", "replace or drop them first")
    return arr, names or [f"f{i}" for i in range(arr.shape[1])]


def load_data(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """A data file as rows x features: ``.npy``, ``.csv`` (with a header row) or ``.parquet``."""
    path = Path(path)
    if not path.is_file():
        raise SpecError("DATA", f"no file {str(path)!r}", "give a .npy, .csv or .parquet file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return as_matrix(np.load(path, allow_pickle=False))
        except ValueError as exc:
            raise SpecError("DATA", f"{path} is not a numeric .npy array: {exc}") from None
    if suffix in (".csv", ".parquet"):
        try:
            import pandas as pd
        except ImportError:
            raise SpecError(
                "DATA",
                f"reading {suffix} needs pandas",
                "pip install pandas (pyarrow for .parquet)",
            ) from None

        try:
            frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
        except Exception as exc:  # pandas raises many types for a malformed file
            raise SpecError("DATA", f"cannot read {path}: {exc}") from None
        return as_matrix(frame)
    raise SpecError(
        "DATA", f"{path.name}: unknown format {suffix or '(none)'}", "use .npy, .csv or .parquet"
    )
