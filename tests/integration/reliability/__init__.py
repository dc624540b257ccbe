"""Reliability suite: faults, load and bad input (issue 14)."""
