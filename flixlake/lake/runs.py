"""Per-run manifests: how the batch steps of one ``--run-date`` hand results to each other.

Each step writes ``<artifacts>/runs/<run-date>/<step>.json`` atomically once it succeeded; the
next step reads it. Rerunning a step overwrites its manifest, so retries are safe.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from flixlake.config import Settings

STEPS = ("compact", "quality", "detect", "train", "evaluate", "register", "publish")


class MissingStepError(RuntimeError):
    """A step ran before the step it depends on succeeded for the same run date."""


def parse_run_date(value: str | dt.date) -> dt.date:
    """``YYYY-MM-DD`` (``--run-date``) to a date, with a clear error."""
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--run-date must be YYYY-MM-DD, got {value!r}") from None


def run_dir(settings: Settings, run_date: dt.date) -> Path:
    path = settings.artifacts_root / "runs" / run_date.isoformat()
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_manifest(settings: Settings, run_date: dt.date, step: str, data: dict[str, Any]) -> Path:
    """Atomically write a step's manifest (rename over the old one)."""
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}")
    target = run_dir(settings, run_date) / f"{step}.json"
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{step}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
    os.replace(tmp, target)
    return target


def read_manifest(settings: Settings, run_date: dt.date, step: str) -> dict[str, Any]:
    """Read a step's manifest; a clear error when that step has not succeeded yet."""
    path = settings.artifacts_root / "runs" / run_date.isoformat() / f"{step}.json"
    if not path.exists():
        raise MissingStepError(
            f"step {step!r} has not succeeded for run date {run_date} (no {path}); run it first"
        )
    result: dict[str, Any] = json.loads(path.read_text())
    return result
