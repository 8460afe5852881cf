"""The publish step over tiny lakes: ALS from hand-made factors, baselines fitted on pinned pairs.

The gate's pure functions are tested in test_gate.py."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from pyspark.sql import SparkSession

from flixlake.batch.errors import GateFailedError
from flixlake.batch.features import TimeWindows
from flixlake.batch.publish import run_publish, seen_pairs, with_movie_ids
from flixlake.config import Settings, load_settings
from flixlake.lake.registry import current_published_model, get_model, upsert_model
from flixlake.lake.runs import read_manifest, run_dir, write_manifest
from flixlake.lake.store import Lake
from flixlake.lake.tables import MODEL_EVALUATIONS, MOVIES, RATINGS, WATCH_SESSIONS

RUN = dt.date(2026, 11, 22)
VERSION = "als-20261122-cccc3333"
T = dt.datetime(2026, 11, 21, 20, 0, tzinfo=dt.UTC)


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


def _hit_rates(
    version: str, segments: dict[str, tuple[int, float]], recommender: str = "als"
) -> pa.Table:
    """``model_evaluations`` rows of a recommender's hit rate per segment: {segment: (users, rate)}."""
    return pa.Table.from_pylist(
        [
            {
                "model_version": version,
                "run_date": RUN,
                "recommender": recommender,
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
    write_manifest(settings, RUN, "evaluate", {"model_version": VERSION, "recommender": "als"})
    upsert_model(lake, _model(VERSION, 0.3))
    lake.append("model_evaluations", _hit_rates(VERSION, {"all": (40, 0.5), "gender=F": (20, 0.5)}))
    return load_settings(
        "test",
        home=settings.home,
        overrides={"batch": {"top_n": 2}},
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


def test_a_model_the_gate_would_not_choose_is_not_published(
    spark: SparkSession, lake: Lake, tiny: Settings
) -> None:
    """Registered as ALS, but item-kNN is better (e.g. the thresholds changed since evaluate)."""
    upsert_model(lake, _model(VERSION, 0.24))  # > popularity 0.2, < item-kNN 0.25
    with pytest.raises(GateFailedError, match="the gate now chooses itemknn but the registered"):
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


# -- a baseline wins: its top-N for every user is the batch view ----------------------------------
# liked (watched) before the run date: 1: m0 m1; 2: m0 m1 m2; 3: m1 m2; 4: m0 (+ m2 rated 1 star:
# seen, not liked). After the pin, 4 also watches m3: neither seen nor liked by the model.
LIKED = {1: [0, 1], 2: [0, 1, 2], 3: [1, 2], 4: [0]}


@pytest.fixture
def watched(lake: Lake, settings: Settings) -> Settings:
    lake.append(
        "movies",
        pa.Table.from_pylist(
            [{"movie_idx": i, "movie_id": f"m{i}"} for i in range(4)], schema=MOVIES.schema
        ),
    )
    sessions = [_session(u, m) for u, movies in LIKED.items() for m in movies]
    lake.append("watch_sessions", pa.Table.from_pylist(sessions, schema=WATCH_SESSIONS.schema))
    lake.append(
        "ratings",
        pa.Table.from_pylist(
            [{"user_id": 4, "movie_id": "m2", "movie_idx": 2, "rating": 1, "rated_at": T}],
            schema=RATINGS.schema,
        ),
    )
    lake.append(
        "watch_sessions", pa.Table.from_pylist([_session(4, 3)], schema=WATCH_SESSIONS.schema)
    )
    tiny = load_settings("test", home=settings.home, overrides={"batch": {"top_n": 2}})
    write_manifest(tiny, RUN, "quality", {"passed": True, "checks": []})
    write_manifest(
        tiny,
        RUN,
        "train",
        {
            "model_version": VERSION,
            "windows": TimeWindows.for_run_date(RUN, tiny.batch).to_dict(),
            "factors": {"final": {"users": "/nowhere", "items": "/nowhere"}},
        },
    )
    return tiny


def _baseline_model(lake: Lake, kind: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A registered baseline model whose evaluate step measured every candidate: the served
    kind's hit rate meets the fairness requirement, ALS's (not served) would not."""
    version = f"{kind}-20261122-dddd4444"
    fair = {"all": (40, 0.5), "gender=F": (20, 0.5)}
    unfair = {"all": (200, 0.5), "gender=F": (100, 0.05)}
    lake.append("model_evaluations", _hit_rates(version, fair, kind))
    lake.append("model_evaluations", _hit_rates(version, unfair, "als"))
    row = _model(version, 0.2)
    row["algorithm"] = kind
    row["params"] = {"recommender": kind, **params}
    row["metrics"]["baselines"] = {
        "popularity": {"ndcg": 0.25 if kind == "popularity" else 0.1},
        "itemknn": {"ndcg": 0.3 if kind == "itemknn" else 0.1},
    }
    return version, row


def test_a_winning_item_knn_serves_its_top_n_for_every_user(
    spark: SparkSession, lake: Lake, watched: Settings
) -> None:
    """Cosine of liked-by columns: m0~m1 2/3, m0~m2 1/sqrt(6), m1~m2 2/sqrt(6).

    1 -> m2 (1/sqrt6 + 2/sqrt6); 2 has seen every movie with a neighbour: no row;
    3 -> m0 (2/3 + 1/sqrt6); 4 -> m1 (2/3), m2 is seen (rated 1 star), m3 is after the pin.
    """
    version, row = _baseline_model(lake, "itemknn", {"neighbours": 100})
    upsert_model(lake, row)
    write_manifest(watched, RUN, "evaluate", {"model_version": version, "recommender": "itemknn"})

    summary = run_publish(spark, lake, watched, RUN)

    got = _view(lake)
    assert [(v, u, r, m) for v, u, r, m, _ in got] == [
        (version, 1, 1, "m2"),
        (version, 3, 1, "m0"),
        (version, 4, 1, "m1"),
    ]
    assert [s for *_, s in got] == pytest.approx([3 / 6**0.5, 2 / 3 + 1 / 6**0.5, 2 / 3], 1e-6)
    assert summary["recommender"] == "itemknn" and summary["rows"] == 3
    assert {"fit_s", "top_n_s"} <= set(summary["timings"])
    model = get_model(lake, version)
    assert model["status"] == "published"
    assert model["status_reason"].startswith("itemknn is served (NDCG 0.3000)")
    current = current_published_model(lake)
    assert current is not None and current["model_version"] == version
    report = Path(summary["report"]).read_text()
    assert "Published recommender: itemknn" in report


def test_a_winning_popularity_serves_the_most_watched_unseen_movies(
    spark: SparkSession, lake: Lake, watched: Settings
) -> None:
    """Watchers: m0 3, m1 3, m2 2 (m3 none before the pin); ties by movie index."""
    version, row = _baseline_model(lake, "popularity", {})
    upsert_model(lake, row)
    write_manifest(
        watched, RUN, "evaluate", {"model_version": version, "recommender": "popularity"}
    )

    run_publish(spark, lake, watched, RUN)

    assert _view(lake) == [
        (version, 1, 1, "m2", 2.0),
        (version, 3, 1, "m0", 3.0),
        (version, 4, 1, "m1", 3.0),
    ]
    assert get_model(lake, version)["status"] == "published"


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
