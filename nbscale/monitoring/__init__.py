"""Monitoring: drift against a training baseline, endpoint metrics with SageMaker's names.

- ``baseline``: per-feature quantile bins, summary statistics and a reference
  sample, built from numpy arrays or pandas frames and kept as JSON.
- ``drift``: captured inputs compared with a baseline, window by window (PSI
  with a calibrated threshold and a two-sample KS test, Benjamini-Hochberg
  across features).
- ``metrics``: Invocations, errors, ModelLatency/OverheadLatency percentiles
  from the serving runtime's Prometheus histograms.
- ``idle``: what is running and what it costs per hour.
"""
