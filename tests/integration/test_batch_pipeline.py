"""End to end on real parts: generate → ingest → the whole batch pipeline on Spark + Delta.

One small synthetic world is generated, ingested and run through every batch step once per test
module (the shared SparkSession); the tests then check what users and analysts would look at.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from flixlake.batch.ingest import ingest_paths
from flixlake.batch.pipeline import StepResult, run_batch
from flixlake.config import Settings, load_settings
from flixlake.lake.store import Lake
from flixlake.sim.generate import generate_history

pytestmark = pytest.mark.integration


@dataclass
class PipelineRun:
    settings: Settings
    lake: Lake
    data: Path
    run_date: dt.date
    generated: dict[str, Any]
    results: dict[str, StepResult]


@pytest.fixture(scope="module")
def pipeline(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PipelineRun]:
    home = tmp_path_factory.mktemp("pipeline")
    settings = load_settings("test", home=home)
    lake = Lake(settings.lake_root)
    data = home / "data"
    generated = generate_history(data, n_users=400, n_movies=120, days=16, seed=3, bad_rate=0.01)
    ingest_paths(lake, [data], chunk_lines=50_000)
    run_date = dt.date.fromisoformat(str(generated["last_date"]))
    results = run_batch(spark, lake, settings, run_date)
    yield PipelineRun(settings, lake, data, run_date, generated, {r.step.name: r for r in results})


def test_every_generated_line_is_in_bronze_once_and_rejects_in_quarantine(
    pipeline: PipelineRun,
) -> None:
    total_lines = sum(
        sum(1 for _ in path.open("rb")) for path in sorted(pipeline.data.glob("events-*.log"))
    )
    counts = pipeline.lake.sql(
        "SELECT count(*) AS n, count(DISTINCT source || ':' || CAST(source_offset AS VARCHAR)) AS positions, "
        "sum(CASE WHEN parse_status = 'rejected' THEN 1 ELSE 0 END) AS rejected FROM bronze_events"
    ).to_pylist()[0]
    assert counts["n"] == total_lines == counts["positions"]
    assert counts["rejected"] == pipeline.lake.read("quarantine_events").num_rows
    assert counts["rejected"] > 0  # bad_rate=0.01 injected some


def test_reingesting_adds_nothing(pipeline: PipelineRun) -> None:
    before = pipeline.lake.version("bronze_events")
    summary = ingest_paths(pipeline.lake, [pipeline.data], chunk_lines=50_000)
    assert summary.lines == 0
    assert pipeline.lake.version("bronze_events") == before


def test_model_beats_popularity_and_is_published_with_provenance(pipeline: PipelineRun) -> None:
    evaluation = pipeline.results["evaluate"].summary
    assert evaluation["als"]["ndcg"] > evaluation["popularity"]["ndcg"]
    version = pipeline.results["train"].summary["model_version"]
    models = {m["model_version"]: m for m in pipeline.lake.read("models").to_pylist()}
    model = models[version]
    assert model["status"] == "published"
    inputs = json.loads(model["input_versions"])
    assert {"bronze_events", "watch_sessions", "ratings"} <= set(inputs)
    assert json.loads(model["library_versions"])["pyspark"] == "4.2.0"


def test_batch_view_has_top_n_unseen_movies_for_users(pipeline: PipelineRun) -> None:
    version = pipeline.results["train"].summary["model_version"]
    recs = pipeline.lake.sql(
        f"SELECT user_id, movie_id, rank FROM batch_recommendations WHERE model_version = '{version}'"
    ).to_pylist()
    by_user: dict[int, list[tuple[int, str]]] = {}
    for row in recs:
        by_user.setdefault(row["user_id"], []).append((row["rank"], row["movie_id"]))
    assert len(by_user) > 100
    top_n = pipeline.settings.batch.top_n
    for items in by_user.values():
        ranks = sorted(r for r, _ in items)
        assert ranks == list(range(1, len(ranks) + 1)) and len(ranks) <= top_n
        assert len({m for _, m in items}) == len(items)
    seen = pipeline.lake.sql("SELECT DISTINCT user_id, movie_id FROM watch_sessions").to_pylist()
    seen_pairs = {(r["user_id"], r["movie_id"]) for r in seen}
    assert not any((r["user_id"], r["movie_id"]) in seen_pairs for r in recs)


def test_rerunning_the_same_date_changes_nothing(
    spark: SparkSession, pipeline: PipelineRun
) -> None:
    def snapshot() -> tuple[int, int, int]:
        return (
            pipeline.lake.read("watch_sessions").num_rows,
            pipeline.lake.read("batch_recommendations").num_rows,
            pipeline.lake.read("models").num_rows,
        )

    before = snapshot()
    results = {
        r.step.name: r
        for r in run_batch(spark, pipeline.lake, pipeline.settings, pipeline.run_date)
    }
    assert (
        results["train"].summary["model_version"]
        == pipeline.results["train"].summary["model_version"]
    )
    assert snapshot() == before
