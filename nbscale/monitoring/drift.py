"""Drift: a window of inputs compared with a training baseline, feature by feature.

Two tests per feature, both corrected across features with Benjamini-Hochberg
(``scipy.stats.false_discovery_control``) at level ``fdr``:

- **PSI** over the baseline's quantile bins. Its threshold is calibrated for
  the window size ``n``, the baseline size ``m`` and the bin count ``k``: when
  both samples come from one distribution, ``PSI / (1/n + 1/m)`` follows a
  chi-square distribution with ``k - 1`` degrees of freedom (PSI is
  asymptotically the symmetric chi-square divergence; Yurdakul 2018). So the
  p-value is ``chi2.sf(PSI / (1/n + 1/m), k - 1)`` and the threshold reported
  is the PSI at which that p-value reaches ``alpha``.
- **Kolmogorov-Smirnov**, two-sample (``scipy.stats.ks_2samp``), between the
  window and the baseline's reference sample.

A feature drifts when either corrected p-value is at most ``fdr``. Its
``share`` is the total-variation distance between the window's and the
baseline's bin shares: the smallest fraction of the window's rows that would
have to change bins for the window to look like the baseline.
"""

from __future__ import annotations

import functools
import math
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from ..errors import SpecError
from ..words import count
from .baseline import Baseline

DEFAULT_FDR = 0.01
MIN_ROWS_PER_BIN = 5  # the chi-square approximation wants about 5 expected rows per bin

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | float | int, what: str = "window") -> float:
    """``"90s"``, ``"30m"``, ``"1h"``, ``"7d"`` (or a number of seconds) -> seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(text))
        if not m:
            raise SpecError(what, f"{text!r} is not a duration", "e.g. 90s, 30m, 1h, 7d")
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if not math.isfinite(seconds) or seconds <= 0 or seconds > 366 * 86400:
        raise SpecError(what, f"must be more than 0 seconds and at most a year, got {text!r}")
    return seconds


@dataclass
class FeatureDrift:
    feature: str
    index: int
    rows: int
    psi: float
    psi_threshold: float
    psi_p: float
    psi_p_adjusted: float
    ks: float
    ks_p: float
    ks_p_adjusted: float
    share: float  # total-variation distance between the window's and the baseline's bins
    out_of_range: float  # share of the window outside the baseline's [min, max]
    mean: float
    baseline_mean: float
    drifting: bool
    tests: list[str] = field(default_factory=list)  # which tests flagged it: psi, ks

    @property
    def p_value(self) -> float:
        return min(self.psi_p_adjusted, self.ks_p_adjusted)


@dataclass
class WindowReport:
    start: float
    end: float
    rows: int
    fdr: float
    features: list[FeatureDrift]
    skipped: str | None = None  # why the window was not tested (too few rows)

    @property
    def drifting(self) -> list[FeatureDrift]:
        """The drifting features, strongest first (largest KS statistic)."""
        return sorted((f for f in self.features if f.drifting), key=lambda f: -f.ks)

    def to_dict(self) -> dict[str, Any]:
        ordered = self.drifting + sorted(
            (f for f in self.features if not f.drifting), key=lambda f: f.p_value
        )
        return {
            "start": self.start,
            "end": self.end,
            "rows": self.rows,
            "fdr": self.fdr,
            "skipped": self.skipped,
            "drifting": [f.feature for f in self.drifting],
            "features": [{**asdict(f), "p_value": f.p_value} for f in ordered],
        }

    def describe(self, limit: int = 10) -> str:
        span = (
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.start))}"
            f" .. {time.strftime('%Y-%m-%d %H:%M:%S' if self.end - self.start >= 86400 else '%H:%M:%S', time.localtime(self.end))}"
        )
        if self.skipped:
            return f"{span}  {count(self.rows, 'row')}  not tested: {self.skipped}"
        drift = self.drifting
        if not drift:
            return f"{span}  {count(self.rows, 'row')}  no drift in {count(len(self.features), 'feature')}"
        lines = [
            f"{span}  {count(self.rows, 'row')}  {len(drift)} of "
            f"{count(len(self.features), 'feature')} drift:"
        ]
        for f in drift[:limit]:
            lines.append(
                f"  {f.feature}: KS {f.ks:.3f} (p {f.ks_p_adjusted:.2g}), PSI {f.psi:.3f}"
                f" (threshold {f.psi_threshold:.3f}, p {f.psi_p_adjusted:.2g}),"
                f" share {f.share:.1%}, mean {f.mean:.4g} vs {f.baseline_mean:.4g}"
            )
        if len(drift) > limit:
            lines.append(f"  ... and {len(drift) - limit} more")
        return "\n".join(lines)


@functools.lru_cache(maxsize=256)
def _chi2_isf(alpha: float, dof: int) -> float:
    return float(stats.chi2.isf(alpha, dof))


def _psi(window_counts: np.ndarray, base_props: np.ndarray) -> float:
    """PSI with half a row added to each window bin, so an empty bin gives a finite log."""
    k = len(base_props)
    q = (window_counts + 0.5) / (window_counts.sum() + 0.5 * k)
    p = np.maximum(base_props, 1e-12)
    return float(np.sum((q - p) * np.log(q / p)))


def _ks(baseline: Baseline, x: np.ndarray, tested: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sample KS per feature; one vectorised scipy call when the samples line up."""
    nfeat = x.shape[1]
    stat, pval = np.zeros(nfeat), np.ones(nfeat)
    sizes = {len(f.reference) for f in baseline.features}
    # the exact KS distribution costs ~1 ms per feature; past 100 rows a side the
    # asymptotic one is within 1e-3 of it
    method = "asymp" if min(x.shape[0], *sizes) >= 100 else "auto"
    if len(sizes) == 1 and tested.all() and not np.isnan(x).any():
        ref = np.column_stack([f.reference for f in baseline.features])
        res = stats.ks_2samp(x, ref, axis=0, method=method)
        return np.asarray(res.statistic, dtype=float), np.asarray(res.pvalue, dtype=float)
    for j, fb in enumerate(baseline.features):
        if tested[j]:
            col = x[:, j]
            col = col[~np.isnan(col)]
            res = stats.ks_2samp(col, np.asarray(fb.reference), method=method)
            stat[j], pval[j] = float(res.statistic), float(res.pvalue)
    return stat, pval


def compare(
    baseline: Baseline,
    window: Any,
    fdr: float = DEFAULT_FDR,
    start: float = 0.0,
    end: float = 0.0,
    min_rows: int | None = None,
) -> WindowReport:
    """Test one window (rows x features, same layout as the baseline) against ``baseline``."""
    if not 0 < fdr < 1:
        raise SpecError("fdr", f"must be between 0 and 1, got {fdr!r}")
    x = np.asarray(window, dtype=float)
    x = x.reshape(x.shape[0], -1) if x.ndim > 1 else x[:, None]
    nfeat = len(baseline.features)
    if x.shape[1] != nfeat:
        raise SpecError(
            "window",
            f"{x.shape[1]} features per row, the baseline has {nfeat}",
            "compare inputs with the baseline of the same model",
        )
    min_rows = min_rows or MIN_ROWS_PER_BIN * baseline.bins
    if x.shape[0] < min_rows:
        return WindowReport(
            start,
            end,
            int(x.shape[0]),
            fdr,
            [],
            f"{count(x.shape[0], 'row')}, fewer than {min_rows}",
        )
    rows, psis, thresholds, shares, outside, means = [], [], [], [], [], []
    chi, dof = np.zeros(nfeat), np.zeros(nfeat)  # PSI / (1/n + 1/m) and k - 1, per feature
    for j, fb in enumerate(baseline.features):
        col = x[:, j]
        col = col[~np.isnan(col)]
        n, m = col.size, fb.count
        rows.append(n)
        props = np.asarray(fb.proportions)
        k = len(props)
        means.append(float(col.mean()) if n else math.nan)
        if n < min_rows:
            psis.append(0.0), thresholds.append(math.inf)
            shares.append(0.0), outside.append(0.0)
            continue
        counts = fb.bin_counts(col)
        scale = 1.0 / n + 1.0 / m
        psi = _psi(counts, props)
        psis.append(psi)
        if k > 1:
            chi[j], dof[j] = psi / scale, k - 1
            thresholds.append(_chi2_isf(fdr, k - 1) * scale)
        else:  # a constant feature has one bin: PSI says nothing, KS still tests it
            thresholds.append(math.inf)
        shares.append(float(0.5 * np.abs(counts / n - props).sum()))
        outside.append(float(np.mean((col < fb.min) | (col > fb.max))))
    ks_stat, ks_p = _ks(baseline, x, np.asarray(rows) >= min_rows)
    psi_p = np.ones(nfeat)
    has = dof > 0
    psi_p[has] = stats.chi2.sf(chi[has], dof[has])
    psi_adj = stats.false_discovery_control(psi_p, method="bh")
    ks_adj = stats.false_discovery_control(ks_p, method="bh")
    feats = []
    for j, fb in enumerate(baseline.features):
        tests = [name for name, p in (("psi", psi_adj[j]), ("ks", ks_adj[j])) if p <= fdr]
        feats.append(
            FeatureDrift(
                feature=fb.name,
                index=j,
                rows=rows[j],
                psi=round(psis[j], 6),
                psi_threshold=thresholds[j],
                psi_p=float(psi_p[j]),
                psi_p_adjusted=float(psi_adj[j]),
                ks=round(float(ks_stat[j]), 6),
                ks_p=float(ks_p[j]),
                ks_p_adjusted=float(ks_adj[j]),
                share=round(shares[j], 6),
                out_of_range=round(outside[j], 6),
                mean=means[j],
                baseline_mean=fb.mean,
                drifting=bool(tests),
                tests=tests,
            )
        )
    return WindowReport(start, end, int(x.shape[0]), fdr, feats)


def windows(
    baseline: Baseline,
    times: np.ndarray,
    rows: np.ndarray,
    window_s: float,
    fdr: float = DEFAULT_FDR,
    cache: dict | None = None,
) -> list[WindowReport]:
    """One report per window of ``window_s`` seconds (aligned to the clock), oldest first.

    With ``cache`` (a dict kept by the caller for one baseline and window length),
    a window whose rows are unchanged since the last call is not tested again:
    only the window still filling up costs anything on a repeated look.
    """
    if len(times) == 0:
        return []
    times = np.asarray(times, dtype=float)
    slot = np.floor(times / window_s).astype(np.int64)
    reports = []
    for s in np.unique(slot):
        sel = slot == s
        part = rows[sel]
        key = (int(s), int(part.shape[0]), float(np.nansum(part)), fdr)
        report = cache.get(key) if cache is not None else None
        if report is None:
            report = compare(
                baseline, part, fdr, start=float(s * window_s), end=float((s + 1) * window_s)
            )
            if cache is not None:
                if len(cache) > 4096:  # bounded: a long-lived server looks at many windows
                    cache.clear()
                cache[key] = report
        reports.append(report)
    return reports
