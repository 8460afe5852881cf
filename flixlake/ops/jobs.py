"""Shared plumbing of the thin ``jobs/*.py`` spark-submit entry points.

A job file only names its step function; this parses ``--run-date`` (or ``--until`` for jobs
that evaluate up to a point in time), ``--env`` and ``--home``, loads the settings, builds the one
SparkSession, runs the step and prints its summary as JSON.
Exit code 0 on success, 2 on a user error (bad date, missing table or step), 3 when a gate fails,
4 when no model could be trained (the reason in one line; the traces in the run's ``train.log``).

When ``monitoring.pushgateway_url`` is set, every run that got as far as loading its settings
pushes its outcome, duration and numeric summary (rows, model metrics) to the Pushgateway, group
``job=flixlake_job, task=<jobs/ file name>`` (:mod:`flixlake.monitoring.push`); a job is never
failed by that.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flixlake.batch.errors import GateFailedError, TrainingError
from flixlake.config import ConfigError, Settings, load_settings
from flixlake.contract.logformat import as_utc
from flixlake.lake.runs import MissingStepError, parse_run_date
from flixlake.lake.store import MissingTableError, lake_from_settings
from flixlake.monitoring.push import job_registry, push
from flixlake.ops.spark import build_spark_session

StepFn = Callable[..., dict[str, Any]]


def parse_timestamp(value: str, option: str = "--until") -> dt.datetime:
    """An ISO-8601 time (the online DAG's logical time) as UTC; without a zone it is UTC."""
    try:
        stamp = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{option} must be an ISO-8601 time like 2026-11-22T10:00:00+00:00, got {value!r}"
        ) from None
    return as_utc(stamp)


def parse_until(value: str | None) -> dt.datetime:
    """``--until``: the end of what an evaluation covers; now when not given (or empty)."""
    return parse_timestamp(value) if value else dt.datetime.now(dt.UTC)


def run_job(
    step: StepFn, description: str, argv: list[str] | None = None, *, until: bool = False
) -> int:
    """Run one step as a spark-submit job: ``step(spark, lake, settings, run_date)``.

    With ``until=True`` the job takes ``--until`` (an ISO time, default now) instead of
    ``--run-date`` and calls ``step(spark, lake, settings, until)``.
    """
    parser = argparse.ArgumentParser(description=description)
    if until:
        parser.add_argument(
            "--until", default=None, help="ISO time (the Airflow run's logical time); default now"
        )
    else:
        parser.add_argument(
            "--run-date",
            required=True,
            help="day to process, YYYY-MM-DD (in Airflow: the day before the logical date)",
        )
    parser.add_argument("--env", default=None, help="config environment (default $FLIXLAKE_ENV)")
    parser.add_argument("--home", default=None, help="state folder (default $FLIXLAKE_HOME)")
    args = parser.parse_args(argv)
    try:
        when: dt.date | dt.datetime = (
            parse_until(args.until) if until else parse_run_date(args.run_date)
        )
        settings = load_settings(args.env, home=args.home)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = time.time()
    code, summary = 1, None  # anything not caught below fails the job (and is pushed as such)
    try:
        spark = build_spark_session(
            settings, app_name=f"flixlake-{step.__name__}-{when.isoformat()}"
        )
        try:
            summary = step(spark, lake_from_settings(settings), settings, when)
            code = 0
        except GateFailedError as exc:
            print(f"gate failed: {exc}", file=sys.stderr)
            code = 3
        except TrainingError as exc:
            print(f"training failed: {exc}", file=sys.stderr)
            code = 4
        except (MissingTableError, MissingStepError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = 2
        finally:
            spark.stop()
    finally:
        push_job_outcome(settings, task_name(step), code, started, summary)
    if code == 0:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return code


def task_name(step: StepFn) -> str:
    """The job's name for metrics: its ``jobs/<name>.py`` file (Airflow's task id)."""
    script = Path(sys.argv[0])
    return script.stem if script.suffix == ".py" else step.__name__


def push_job_outcome(
    settings: Settings,
    task: str,
    code: int,
    started: float,
    summary: dict[str, Any] | None,
) -> bool:
    """Push one run's outcome to the Pushgateway (if configured); True when pushed."""
    finished = time.time()
    registry = job_registry(task, code == 0, finished - started, finished, code, summary)
    return push(settings.monitoring, "flixlake_job", {"task": task}, registry)
