"""The publication gate (pure) and the publish step over a tiny lake with hand-made factors."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from pyspark.sql import SparkSession

from flixlake.batch.errors import GateFailedError
from flixlake.batch.publish import publish_decision, run_publish, seen_pairs, with_movie_ids
from flixlake.config import PublishConfig, Settings, load_settings
from flixlake.lake.registry import current_published_model, get_model, upsert_model
from flixlake.lake.runs import read_manifest, run_dir, write_manifest
from flixlake.lake.store import Lake
from flixlake.lake.tables import MODEL_EVALUATIONS, MOVIES, RATINGS, WATCH_SESSIONS

RUN = dt.date(2026, 11, 22)
VERSION = "als-20261122-cccc3333"
T = dt.datetime(2026, 11, 21, 20, 0, tzinfo=dt.UTC)
CFG = PublishConfig(min_lift_over_popularity=1.0, max_regression=0.25)


# -- the gate as a pure function -----------------------------------------------------------------
def pop(value: float | None) -> dict[str, float | None]:
    return {"popularity": value}


def test_gate_passes_when_als_beats_popularity_and_nothing_is_published() -> None:
    ok, reason = publish_decision(0.12, pop(0.10), None, CFG)
    assert ok is True
    assert "no published model" in reason


def test_gate_needs_strictly_more_than_popularity_times_the_lift() -> None:
    assert publish_decision(0.10, pop(0.10), None, CFG)[0] is False  # equal is not a lift
    lifted = PublishConfig(min_lift_over_popularity=1.5)
    ok, reason = publish_decision(0.14, pop(0.10), None, lifted)
    assert ok is False  # needs > 0.15
    assert "does not beat popularity 0.1000 x 1.5 = 0.1500" in reason
    assert publish_decision(0.16, pop(0.10), None, lifted)[0]


def test_gate_compares_against_the_best_baseline() -> None:
    baselines = {"popularity": 0.05, "itemknn": 0.11, "ease": 0.13}
    ok, reason = publish_decision(0.12, baselines, None, CFG)
    assert ok is False
    assert reason.startswith("baseline ease is better on this window")
    assert "does not beat ease 0.1300 x 1 = 0.1300" in reason
    ok, reason = publish_decision(0.14, baselines, None, CFG)
    assert ok is True
    assert "> best baseline ease 0.1300" in reason
    # a baseline that could not be measured does not count, the others still do
    assert publish_decision(0.12, {**baselines, "ease": None}, None, CFG)[0] is True


def test_gate_allows_a_bounded_regression_against_the_current_model() -> None:
    # current 0.5, max_regression 0.25 -> floor 0.375 (exact in binary floating point)
    assert publish_decision(0.375, pop(0.1), 0.5, CFG)[0] is True
    ok, reason = publish_decision(0.37, pop(0.1), 0.5, CFG)
    assert ok is False
    assert "regresses more than 25%" in reason and "on the same window" in reason
    assert publish_decision(0.6, pop(0.1), 0.5, CFG)[0] is True


def test_gate_refuses_missing_measurements() -> None:
    assert publish_decision(math.nan, pop(0.1), None, CFG)[0] is False
    assert publish_decision(None, pop(0.1), None, CFG)[0] is False
    assert publish_decision(0.2, pop(None), None, CFG)[0] is False
    ok, reason = publish_decision(0.0, pop(0.0), None, CFG, n_users=0)
    assert ok is False and "nothing was measured" in reason


# -- transformations -----------------------------------------------------------------------------
def test_seen_pairs_is_the_distinct_union(spark: SparkSession) -> None:
    watched = spark.createDataFrame([(1, 0), (1, 0), (2, 5)], "user_id long, movie_idx int")
    rated = spark.createDataFrame([(1, 0), (1, 3)], "user_id long, movie_idx int")
    expected = spark.createDataFrame([(1, 0), (1, 3), (2, 5)], "user_id long, movie_idx int")
    assert_df_equality(seen_pairs(watched, rated), expected, ignore_row_order=True)


def test_with_movie_ids_maps_indices_to_slugs(spark: SparkSession) -> None:
    recs = spark.createDataFrame(
        [(1, 1, 7, 0.5), (1, 2, 9, 0.25)], "user_id long, rank int, movie_idx int, score float"
    )
    movies = spark.createDataFrame(
        [(7, "heat+1995"), (8, "up+2009")], "movie_idx int, movie_id string"
    )
    expected = spark.createDataFrame(
        [(1, 1, 0.5, "heat+1995")], "user_id long, rank int, score float, movie_id string"
    )
    got = recs.transform(with_movie_ids(movies)).select("user_id", "rank", "score", "movie_id")
    assert_df_equality(got, expected, ignore_row_order=True)


# -- the step over a tiny lake -------------------------------------------------------------------
def _session(user: int, idx: int) -> dict[str, Any]:
    return {
        "user_id": user,
        "movie_id": f"m{idx}",
        "movie_idx": idx,
        "minutes_watched": 10,
        "max_minute": 9,
        "first_time": T,
        "last_time": T,
        "event_date": T.date(),
    }


def _factors(path: Path, rows: list[tuple[int, list[float]]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "id": pa.array([r[0] for r in rows], pa.int32()),
                "features": pa.array([r[1] for r in rows], pa.list_(pa.float32())),
            }
        ),
        path,
    )
    return str(path)


def _hit_rates(version: str, segments: dict[str, tuple[int, float]]) -> pa.Table:
    """``model_evaluations`` rows of ALS's hit rate per segment: {segment: (users, rate)}."""
    return pa.Table.from_pylist(
        [
            {
                "model_version": version,
                "run_date": RUN,
                "recommender": "als",
                "segment": segment,
                "metric": "hit_rate",
                "value": rate,
                "n_users": n,
            }
            for segment, (n, rate) in segments.items()
        ],
        schema=MODEL_EVALUATIONS.schema,
    )


def _model(
    version: str,
    als: float,
    status: str = "registered",
    published_at: dt.datetime | None = None,
    incumbent: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "model_version": version,
        "run_date": RUN,
        "algorithm": "als",
        "params": {"rank": 2},
        "metrics": {
            "k": 20,
            "als": {"ndcg": als, "n_users": 10},
            "popularity": {"ndcg": 0.2},
            "baselines": {"popularity": {"ndcg": 0.2}, "itemknn": {"ndcg": 0.25}},
            "incumbent": incumbent or {},
        },
        "input_versions": {"watch_sessions": 1, "ratings": 1, "movies": 1},
        "git_commit": "abc",
        "library_versions": {},
        "artifact_path": "/x",
        "status": status,
        "status_reason": None,
        "registered_at": T,
        "published_at": published_at,
    }


@pytest.fixture
def tiny(lake: Lake, settings: Settings, tmp_path: Path) -> Settings:
    """4 movies, 2 users with 2-d factors, one seen movie each, a registered model (NDCG 0.3)."""
    lake.append(
        "movies",
        pa.Table.from_pylist(
            [
                {
                    "movie_idx": i,
                    "movie_id": f"m{i}",
                    "title": None,
                    "year": None,
                    "genres": None,
                    "first_seen": None,
                }
                for i in range(4)
            ],
            schema=MOVIES.schema,
        ),
    )  # version 1
    lake.append(
        "watch_sessions", pa.Table.from_pylist([_session(1, 0)], schema=WATCH_SESSIONS.schema)
    )  # version 1
    lake.append(
        "ratings",
        pa.Table.from_pylist(
            [{"user_id": 2, "movie_id": "m1", "movie_idx": 1, "rating": 5, "rated_at": T}],
            schema=RATINGS.schema,
        ),
    )  # version 1
    # after the pin: user 1 also watched m2; the model (and so the batch view) must not see it
    lake.append(
        "watch_sessions", pa.Table.from_pylist([_session(1, 2)], schema=WATCH_SESSIONS.schema)
    )  # version 2
    factors = tmp_path / "models" / VERSION / "final"
    users = _factors(factors / "users.parquet", [(1, [1.0, 0.0]), (2, [0.0, 1.0])])
    items = _factors(
        factors / "items.parquet",
        [(0, [3.0, 0.0]), (1, [0.0, 3.0]), (2, [2.0, 1.0]), (3, [1.0, 2.0])],
    )
    write_manifest(settings, RUN, "quality", {"passed": True, "checks": []})
    write_manifest(
        settings,
        RUN,
        "train",
        {"model_version": VERSION, "factors": {"final": {"users": users, "items": items}}},
    )
    upsert_model(lake, _model(VERSION, 0.3))
    lake.append("model_evaluations", _hit_rates(VERSION, {"all": (40, 0.5), "gender=F": (20, 0.5)}))
    return load_settings(
        "test",
        home=settings.home,
        overrides={"batch": {"top_n": 2, "publish": {"min_lift_over_baseline": 1.0}}},
    )


def _view(lake: Lake) -> list[tuple[Any, ...]]:
    rows = lake.read("batch_recommendations").to_pylist()
    return sorted(
        (r["model_version"], r["user_id"], r["rank"], r["movie_id"], r["score"]) for r in rows
    )


# user 1 = (1, 0): scores m0 3 (seen), m2 2, m3 1, m1 0; user 2 = (0, 1): m1 3 (rated), m3 2, m2 1
EXPECTED = [
    (VERSION, 1, 1, "m2", 2.0),
    (VERSION, 1, 2, "m3", 1.0),
    (VERSION, 2, 1, "m3", 2.0),
    (VERSION, 2, 2, "m2", 1.0),
]


def test_publish_writes_the_batch_view_and_makes_the_model_current(
    spark: SparkSession, lake: Lake, tiny: Settings
) -> None:
    summary = run_publish(spark, lake, tiny, RUN)

    assert _view(lake) == EXPECTED
    model = get_model(lake, VERSION)
    assert model["status"] == "published"
    assert model["published_at"] is not None
    current = current_published_model(lake)
    assert current is not None and current["model_version"] == VERSION
    assert summary["published"] is True and summary["rows"] == 4
    assert read_manifest(tiny, RUN, "publish")["rows"] == 4

    # a later, better model goes out; rerunning this run's publish replaces its partition only,
    # keeps its publication time and does not take "current" back
    upsert_model(
        lake, _model("als-newer", 0.9, "published", dt.datetime(2099, 1, 1, tzinfo=dt.UTC))
    )
    run_publish(spark, lake, tiny, RUN)
    assert _view(lake) == EXPECTED
    assert get_model(lake, VERSION)["published_at"] == model["published_at"]
    current = current_published_model(lake)
    assert current is not None and current["model_version"] == "als-newer"


def test_the_gate_uses_the_incumbent_rescored_on_this_window(
    spark: SparkSession, lake: Lake, tiny: Settings
) -> None:
    """Its own window flattered the live model (0.9); on this window it scores 0.25 < 0.3."""
    upsert_model(lake, _model("als-live", 0.9, "published", T))
    rescored = {"model_version": "als-live", "scored": True, "ndcg": 0.25}
    upsert_model(lake, _model(VERSION, 0.3, incumbent=rescored))
    summary = run_publish(spark, lake, tiny, RUN)
    assert summary["published"] is True and summary["replaces"] == "als-live"
    assert "current model's 0.2500 on the same window" in summary["reason"]
    assert "als-live re-scored by evaluate" in summary["reason"]


def test_a_better_baseline_rejects_the_model(
    spark: SparkSession, lake: Lake, tiny: Settings
) -> None:
    upsert_model(lake, _model(VERSION, 0.24))  # > popularity 0.2, < item-kNN 0.25
    with pytest.raises(GateFailedError, match="baseline itemknn is better on this window"):
        run_publish(spark, lake, tiny, RUN)
    assert get_model(lake, VERSION)["status"] == "rejected"
    assert not lake.exists("batch_recommendations")


def test_failed_quality_gate_rejects_and_writes_nothing(
    spark: SparkSession, lake: Lake, tiny: Settings
) -> None:
    write_manifest(tiny, RUN, "quality", {"passed": False, "checks": []})
    with pytest.raises(GateFailedError, match="quality gate"):
        run_publish(spark, lake, tiny, RUN)
    assert get_model(lake, VERSION)["status"] == "rejected"
    assert not lake.exists("batch_recommendations")
    assert not (run_dir(tiny, RUN) / "publish.json").exists()


def test_regression_against_the_current_model_rejects(
    spark: SparkSession, lake: Lake, tiny: Settings
) -> None:
    upsert_model(lake, _model("als-live", 0.2, "published", T))  # its own, older window: 0.2
    rescored = {"model_version": "als-live", "scored": True, "ndcg": 0.5}
    upsert_model(lake, _model(VERSION, 0.3, incumbent=rescored))  # 0.3 < 0.5 x 0.95 here
    with pytest.raises(GateFailedError, match="regresses"):
        run_publish(spark, lake, tiny, RUN)
    rejected = get_model(lake, VERSION)
    assert rejected["status"] == "rejected"
    assert "current model's 0.5000 on the same window" in rejected["status_reason"]
    assert not lake.exists("batch_recommendations")
    current = current_published_model(lake)
    assert current is not None and current["model_version"] == "als-live"


# -- the fairness requirements in the gate (flixlake.batch.fairness) -----------------------------
def _with(tiny: Settings, **audit: Any) -> Settings:
    return load_settings("test", home=tiny.home, overrides={"batch": {"top_n": 2}, "audit": audit})


def test_a_segment_served_far_worse_than_overall_is_refused(
    spark: SparkSession, lake: Lake, tiny: Settings
) -> None:
    # 100 women, 5 hit: Wilson 95% upper bound 0.111 < 0.8 x overall 0.5
    lake.append("model_evaluations", _hit_rates(VERSION, {"gender=F": (100, 0.05)}))
    lake.delete("model_evaluations", "segment = 'gender=F' AND value = 0.5")
    with pytest.raises(GateFailedError, match="model requirement NOT met"):
        run_publish(spark, lake, tiny, RUN)
    rejected = get_model(lake, VERSION)
    assert rejected["status"] == "rejected"
    assert "worst gender=F: hit rate 0.050" in rejected["status_reason"]
    assert current_published_model(lake) is None
    # the view stays in its partition for the audit; the service never loads a rejected model
    assert _view(lake) == EXPECTED

    relaxed = _with(tiny, requirements={"enforce_in_publish": False})
    summary = run_publish(spark, lake, relaxed, RUN)
    assert summary["published"] is True
    assert any("model requirement NOT met" in text for text in summary["requirements"])


def test_a_view_of_head_movies_only_fails_the_system_requirement(
    spark: SparkSession, lake: Lake, tiny: Settings
) -> None:
    # head = 3 of 4 movies: m0 (the one watched), then m1, m2 (ties in id order); the view shows
    # m2 and m3 twice each, so the long tail (m3) gets 2 of 4 slots
    strict = _with(tiny, head_share=0.75, requirements={"system": {"min_long_tail_share": 0.6}})
    with pytest.raises(GateFailedError, match="system requirement NOT met"):
        run_publish(spark, lake, strict, RUN)
    assert "long-tail share 0.500 < 0.6 of 4 slots" in get_model(lake, VERSION)["status_reason"]

    summary = run_publish(spark, lake, _with(tiny, head_share=0.75), RUN)
    assert summary["published"] is True
    assert summary["requirements"][0].startswith(
        "system requirement met (batch_view): long-tail share 0.500 >= 0.2"
    )
