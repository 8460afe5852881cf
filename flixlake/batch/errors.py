"""Errors of the batch steps that entry points turn into exit codes."""

from __future__ import annotations


class GateFailedError(RuntimeError):
    """A quality or publication gate refused the run; nothing downstream may publish."""


class TrainingError(RuntimeError):
    """No model could be trained for the run (its message is one line; traces are in the log)."""
