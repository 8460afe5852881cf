"""The batch pipeline as one ordered list of steps, shared by ``flixlake batch`` and the DAG.

Each step is ``run_<step>(spark, lake, settings, run_date) -> dict`` in its own module and has a
thin spark-submit entry point in ``jobs/``; Airflow runs the entry points, ``flixlake batch``
runs the same functions in one Spark session. Every step is a module of this package. Steps are
named by string and imported when they run, so reading the list (``dags/flixlake_batch.py`` does,
whenever Airflow parses it) imports neither Spark nor scikit-learn.
"""

from __future__ import annotations

import datetime as dt
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flixlake.config import Settings
from flixlake.lake.store import Lake


@dataclass(frozen=True)
class Step:
    name: str  # manifest name (flixlake.lake.runs.STEPS)
    task_id: str  # Airflow task id == jobs/<task_id>.py
    function: str  # "module:function"
    description: str

    def load(self) -> Callable[..., dict[str, Any]]:
        module, _, attr = self.function.partition(":")
        fn: Callable[..., dict[str, Any]] = getattr(importlib.import_module(module), attr)
        return fn


BATCH_STEPS: tuple[Step, ...] = (
    Step(
        "compact", "compact_silver", "flixlake.batch.silver:run_compact", "bronze -> silver tables"
    ),
    Step(
        "quality", "quality_gate", "flixlake.batch.quality:run_quality_gate", "silver quality gate"
    ),
    Step(
        "detect",
        "detect_attacks",
        "flixlake.batch.detect:run_detect",
        "suspected attacker accounts",
    ),
    Step(
        "train",
        "train_model",
        "flixlake.batch.training:run_train",
        "ALS with hyperparameter search",
    ),
    Step(
        "evaluate",
        "evaluate_model",
        "flixlake.batch.evaluation:run_evaluate",
        "ALS vs. popularity, item-kNN, EASE; choose one",
    ),
    Step(
        "register", "register_model", "flixlake.batch.register:run_register", "models + provenance"
    ),
    Step(
        "publish",
        "publish_batch_view",
        "flixlake.batch.publish:run_publish",
        "gate + the chosen recommender's batch view",
    ),
)


@dataclass
class StepResult:
    step: Step
    seconds: float
    summary: dict[str, Any]


def run_batch(
    spark: Any,
    lake: Lake,
    settings: Settings,
    run_date: dt.date,
    on_start: Callable[[Step], None] | None = None,
    on_done: Callable[[StepResult], None] | None = None,
) -> list[StepResult]:
    """Run every batch step in order; a failing gate raises and stops the run there."""
    results = []
    for step in BATCH_STEPS:
        if on_start:
            on_start(step)
        started = time.perf_counter()
        summary = step.load()(spark, lake, settings, run_date)
        result = StepResult(step, time.perf_counter() - started, summary)
        results.append(result)
        if on_done:
            on_done(result)
    return results
