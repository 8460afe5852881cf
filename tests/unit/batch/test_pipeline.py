"""The batch step list: every step is a function of the batch layer, and reading the list (as
Airflow does whenever it parses the batch DAG) imports no Spark or scikit-learn."""

from __future__ import annotations

import subprocess
import sys

from flixlake.batch.pipeline import BATCH_STEPS


def test_every_step_is_a_function_of_the_batch_layer() -> None:
    for step in BATCH_STEPS:
        module, _, _ = step.function.partition(":")
        assert module.startswith("flixlake.batch."), step
        assert callable(step.load()), step


def test_reading_the_step_list_imports_neither_spark_nor_sklearn() -> None:
    probe = (
        "import sys; from flixlake.batch.pipeline import BATCH_STEPS; "
        "print(sorted(m for m in ('pyspark', 'sklearn') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"
