"""Statuses of runs and steps."""

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "PENDING",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
)
CACHED = "CACHED"  # a step skipped because its cache key matched
REUSED = "REUSED"  # a step outside --only/--from whose earlier outputs were used
SKIPPED = "SKIPPED"  # a step not run because an upstream step failed
LOST = "LOST"  # the runner process died
ACTIVE = (PENDING, RUNNING)
