"""Offline evaluation on a hand-made world with hand-made factors, so every number is known.

Movies 0-2 are "A" movies, 3-5 "B" movies; factors are exact: A users and A movies are
``[1, 0]``, B users and B movies ``[0, 1]``. k = 2. Training period: before 2026-11-21.

user  group  training (seen)        test window               relevant   activity
1     A      0, 1                   2                         {2}        normal (2 movies)
2     A      0                      1, 2                      {1, 2}     new (1 movie)
11    B      3, 4                   5                         {5}        normal
12    B      3, 4, 5                3 again                   -          (not evaluated)
13    B      3, 5, 0 (rated 1 star) 4                         {4}        heavy (3 movies)
14    B      4                      5 rated 1 star            -          (not evaluated)
50    -      (none: cold)           0                         {0}        cold

Popularity (distinct watchers in training): 3 (3), 4 (3), 0 (2), 5 (2), 1 (1) -- ties by id.
"""

from __future__ import annotations

import datetime as dt
import shutil
from math import log2
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from flixlake.batch.evaluation import ServedLists, run_evaluate
from flixlake.config import Settings, load_settings
from flixlake.lake import runs
from flixlake.lake.registry import upsert_model
from flixlake.lake.runs import MissingStepError
from flixlake.lake.store import Lake
from flixlake.lake.tables import MODEL_EVALUATIONS, MOVIES, RATINGS, USERS, WATCH_SESSIONS

RUN_DATE = dt.date(2026, 11, 22)
TRAIN_DAY = dt.date(2026, 11, 10)
TEST_DAY = dt.date(2026, 11, 21)
MODEL = "als-20261122-0badcafe"
A, B = [1.0, 0.0], [0.0, 1.0]

TRAINING = {1: [0, 1], 2: [0], 11: [3, 4], 12: [3, 4, 5], 13: [3, 5], 14: [4]}
TEST = {1: [2], 2: [1, 2], 11: [5], 12: [3], 13: [4], 50: [0]}


def _at(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(12, 0), tzinfo=dt.UTC)


def _watch(user: int, movie: int, day: dt.date) -> dict[str, Any]:
    return {
        "user_id": user,
        "movie_id": f"m{movie}",
        "movie_idx": movie,
        "minutes_watched": 30,
        "max_minute": 29,
        "first_time": _at(day),
        "last_time": _at(day),
        "event_date": day,
    }


def _rating(user: int, movie: int, stars: int, day: dt.date) -> dict[str, Any]:
    return {
        "user_id": user,
        "movie_id": f"m{movie}",
        "movie_idx": movie,
        "rating": stars,
        "rated_at": _at(day),
    }


def _write_factors(path: Path, rows: dict[int, list[float]]) -> str:
    path.mkdir(parents=True)
    table = pa.table(
        {
            "id": pa.array(list(rows), pa.int32()),
            "features": pa.array(list(rows.values()), pa.list_(pa.float32())),
        }
    )
    pq.write_table(table, path / "part-0.parquet")
    return str(path)


def build_world(lake: Lake, settings: Settings, with_users: bool = True) -> None:
    """Silver tables, hand-made eval factors and a hand-written "train" manifest."""
    watches = [_watch(u, m, TRAIN_DAY) for u, movies in TRAINING.items() for m in movies]
    watches += [_watch(u, m, TEST_DAY) for u, movies in TEST.items() for m in movies]
    ratings = [_rating(13, 0, 1, TRAIN_DAY), _rating(14, 5, 1, TEST_DAY)]
    lake.append("watch_sessions", pa.Table.from_pylist(watches, schema=WATCH_SESSIONS.schema))
    lake.append("ratings", pa.Table.from_pylist(ratings, schema=RATINGS.schema))
    lake.append(
        "movies",
        pa.Table.from_pylist(
            [{"movie_idx": m, "movie_id": f"m{m}"} for m in range(6)], schema=MOVIES.schema
        ),
    )
    if with_users:
        users = [
            {"user_id": 1, "age": 30, "gender": "F", "occupation": "writer"},
            {"user_id": 11, "age": 17, "gender": "M", "occupation": "student"},
            {"user_id": 13, "age": None, "gender": "", "occupation": None},
        ]
        lake.append("users", pa.Table.from_pylist(users, schema=USERS.schema))
    versions = lake.versions(["watch_sessions", "ratings", "movies"])
    # after the train step pinned its versions: user 1 also watches movie 3 -- must be ignored
    lake.append(
        "watch_sessions",
        pa.Table.from_pylist([_watch(1, 3, TEST_DAY)], schema=WATCH_SESSIONS.schema),
    )
    model_dir = runs.run_dir(settings, RUN_DATE) / "model" / "eval"
    factors = {
        "users": _write_factors(
            model_dir / "user_factors", {1: A, 2: A, 11: B, 12: B, 13: B, 14: B}
        ),
        "items": _write_factors(model_dir / "item_factors", {0: A, 1: A, 2: A, 3: B, 4: B, 5: B}),
    }
    runs.write_manifest(
        settings,
        RUN_DATE,
        "train",
        {
            "model_version": MODEL,
            "input_versions": versions,
            "windows": {
                "history_start": "2016-11-25",
                "validation_start": "2026-11-19",
                "validation_end": "2026-11-20",
                "test_start": "2026-11-21",
                "test_end": "2026-11-22",
            },
            "factors": {"eval": factors, "final": factors},
        },
    )


def _settings(home: Path) -> Settings:
    return load_settings(
        "test",
        home=home,
        overrides={"batch": {"k": 2, "new_user_max_movies": 1, "heavy_user_min_movies": 3}},
    )


@pytest.fixture(scope="module")
def evaluated(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings = _settings(tmp_path_factory.mktemp("eval-home"))
    lake = Lake(settings.lake_root)
    build_world(lake, settings)
    # rows of another model must survive this model's (re)evaluation
    other = {
        "model_version": "als-other",
        "run_date": RUN_DATE,
        "recommender": "als",
        "segment": "all",
        "metric": "ndcg",
        "value": 0.5,
        "n_users": 9,
    }
    lake.append("model_evaluations", pa.Table.from_pylist([other], schema=MODEL_EVALUATIONS.schema))
    summary = run_evaluate(spark, lake, settings, RUN_DATE)
    return {"settings": settings, "lake": lake, "summary": summary}


def _segment(summary: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in summary["segments"] if s["segment"] == name)


def test_als_metrics_by_hand(evaluated: dict[str, Any]) -> None:
    als = evaluated["summary"]["als"]
    # users 1, 2, 11, 13 all get their relevant movies first; user 2 has two relevant ones
    assert als["n_users"] == 4
    assert als["ndcg"] == pytest.approx(1.0)
    assert als["precision"] == pytest.approx((0.5 + 1.0 + 0.5 + 0.5) / 4)
    assert als["recall"] == pytest.approx(1.0)
    assert als["map"] == pytest.approx(1.0)
    # lists: 1 -> [2, 3], 2 -> [1, 2], 11 -> [5, 0], 13 -> [4, 1]: all six movies
    assert als["coverage"] == pytest.approx(6 / 6)


def test_popularity_metrics_by_hand(evaluated: dict[str, Any]) -> None:
    pop = evaluated["summary"]["popularity"]
    # lists: 1 -> [3, 4], 2 -> [3, 4], 11 -> [0, 5] (hit at 2), 13 -> [4, 1] (hit at 1)
    ndcg_11 = 1 / log2(3)
    assert pop["n_users"] == 4
    assert pop["ndcg"] == pytest.approx((ndcg_11 + 1.0) / 4)
    assert pop["precision"] == pytest.approx((0.5 + 0.5) / 4)
    assert pop["recall"] == pytest.approx(2 / 4)
    assert pop["map"] == pytest.approx((0.5 + 1.0) / 4)
    assert pop["coverage"] == pytest.approx(5 / 6)
    assert evaluated["summary"]["lift_ndcg"] == pytest.approx(1.0 / ((ndcg_11 + 1.0) / 4))


def test_item_knn_by_hand(evaluated: dict[str, Any]) -> None:
    """Cosine on liked co-watches: m0~m1 0.707, m3~m4 0.667, m3~m5 0.816, m4~m5 0.408.

    1 -> nothing unseen with a neighbour: popularity [3, 4] (miss); 2 -> [1] (hit 1 of {1, 2});
    11 -> [5] (hit); 13 -> [4] (hit).
    """
    summary = evaluated["summary"]
    knn = summary["baselines"]["itemknn"]
    assert knn["n_users"] == 4
    assert knn["ndcg"] == pytest.approx((0 + 1 / (1 + 1 / log2(3)) + 1 + 1) / 4)
    assert knn["recall"] == pytest.approx((0 + 0.5 + 1 + 1) / 4)
    assert 0.0 <= summary["baselines"]["ease"]["ndcg"] <= 1.0
    assert summary["baselines"]["popularity"] == summary["popularity"]
    assert summary["best_baseline"] == "itemknn"
    assert summary["lift_ndcg_best_baseline"] == pytest.approx(1.0 / knn["ndcg"])
    assert summary["incumbent"] == {
        "model_version": None,
        "scored": False,
        "why": "no published model",
    }


def test_the_incumbent_is_rescored_on_this_window(spark: SparkSession, tmp_path: Path) -> None:
    """A model published on 11-20 (trained before this test window) with swapped tastes.

    Its own evaluation said NDCG 0.99; on this window's users it recommends the other group's
    movies: 1 -> [3, 4], 2 -> [3, 4], 11 -> [0, 1], 13 -> [1, 2]: no hit, NDCG 0.
    """
    settings = _settings(tmp_path)
    lake = Lake(settings.lake_root)
    build_world(lake, settings)
    live = tmp_path / "live-model"
    _write_factors(live / "final" / "user_factors", {1: B, 2: B, 11: A, 12: A, 13: A, 14: A})
    _write_factors(live / "final" / "item_factors", {0: A, 1: A, 2: A, 3: B, 4: B, 5: B})
    published = dt.datetime(2026, 11, 20, 3, tzinfo=dt.UTC)
    upsert_model(
        lake,
        {
            "model_version": "als-20261120-live",
            "run_date": dt.date(2026, 11, 20),
            "algorithm": "als-implicit",
            "params": {},
            "metrics": {"als": {"ndcg": 0.99}, "popularity": {"ndcg": 0.1}},
            "input_versions": {},
            "git_commit": None,
            "library_versions": {},
            "artifact_path": str(live),
            "status": "published",
            "status_reason": None,
            "registered_at": published,
            "published_at": published,
        },
    )
    summary = run_evaluate(spark, lake, settings, RUN_DATE)
    incumbent = summary["incumbent"]
    assert incumbent["model_version"] == "als-20261120-live" and incumbent["scored"] is True
    assert incumbent["why"] == "final factors (trained until 2026-11-20)"
    assert incumbent["n_users"] == summary["als"]["n_users"] == 4
    assert incumbent["ndcg"] == 0.0
    assert summary["als"]["ndcg"] == pytest.approx(1.0)
    rows = lake.read("model_evaluations").to_pylist()
    assert {
        r["value"] for r in rows if r["recommender"] == "incumbent" and r["metric"] == "ndcg"
    } == {0.0}


def test_segments_by_activity_and_demographics(evaluated: dict[str, Any]) -> None:
    summary = evaluated["summary"]
    sizes = {s["segment"]: s["n_users"] for s in summary["segments"]}
    assert sizes == {
        "all": 4,
        "activity=cold": 1,
        "activity=new": 1,
        "activity=normal": 2,
        "activity=heavy": 1,
        "gender=F": 1,
        "gender=M": 1,
        "gender=unknown": 2,
        "age=25-34": 1,
        "age=<18": 1,
        "age=unknown": 2,
        "occupation=student": 1,
        "occupation=unknown": 2,
        "occupation=writer": 1,
    }
    cold = _segment(summary, "activity=cold")  # user 50 gets popularity [3, 4] from both
    assert cold["als"]["ndcg"] == 0.0
    assert cold["als"]["coverage"] == pytest.approx(2 / 6)
    assert cold["popularity"]["coverage"] == pytest.approx(2 / 6)
    assert _segment(summary, "activity=new")["popularity"]["ndcg"] == 0.0  # user 2
    assert _segment(summary, "activity=heavy")["popularity"]["ndcg"] == pytest.approx(1.0)
    assert _segment(summary, "gender=M")["popularity"]["ndcg"] == pytest.approx(1 / log2(3))
    assert summary["counts"]["cold_users"] == 1
    assert summary["counts"]["relevant_pairs"] == 1 + 2 + 1 + 1 + 1


def test_manifest_and_table_rows(evaluated: dict[str, Any]) -> None:
    summary = evaluated["summary"]
    settings: Settings = evaluated["settings"]
    lake: Lake = evaluated["lake"]
    assert runs.read_manifest(settings, RUN_DATE, "evaluate") == summary
    assert (summary["model_version"], summary["k"]) == (MODEL, 2)
    assert summary["input_versions"]["users"] == lake.version("users")
    rows = lake.read("model_evaluations").to_pylist()
    mine = [r for r in rows if r["model_version"] == MODEL]
    assert len(mine) == 14 * 4 * 6  # segments x recommenders (als, popularity, knn, ease) x metrics
    assert {r["metric"] for r in mine} == {
        "ndcg",
        "precision",
        "recall",
        "map",
        "hit_rate",
        "coverage",
    }
    ndcg_all = {
        r["recommender"]: r["value"]
        for r in mine
        if r["segment"] == "all" and r["metric"] == "ndcg"
    }
    assert ndcg_all["als"] == pytest.approx(1.0)
    assert [r["model_version"] for r in rows if r["model_version"] != MODEL] == ["als-other"]


def test_rerun_replaces_this_models_rows(spark: SparkSession, evaluated: dict[str, Any]) -> None:
    lake: Lake = evaluated["lake"]
    again = run_evaluate(spark, lake, evaluated["settings"], RUN_DATE)
    rows = lake.read("model_evaluations").to_pylist()
    assert len(rows) == 14 * 4 * 6 + 1  # segments x recommenders x metrics, + als-other
    assert again["als"] == evaluated["summary"]["als"]


def test_users_table_missing_means_unknown_segments(spark: SparkSession, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    lake = Lake(settings.lake_root)
    build_world(lake, settings, with_users=False)
    summary = run_evaluate(spark, lake, settings, RUN_DATE)
    names = {s["segment"] for s in summary["segments"]}
    assert {"gender=unknown", "age=unknown", "occupation=unknown"} <= names
    assert not {n for n in names if n.startswith("gender=") and n != "gender=unknown"}
    assert summary["input_versions"]["users"] is None


def test_evaluate_needs_the_train_manifest(spark: SparkSession, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with pytest.raises(MissingStepError, match="train"):
        run_evaluate(spark, Lake(settings.lake_root), settings, RUN_DATE)


# -- the gate's choice names the run's model -----------------------------------------------------
def test_als_is_chosen_when_it_beats_every_baseline(evaluated: dict[str, Any]) -> None:
    summary = evaluated["summary"]
    assert summary["recommender"] == "als" and summary["model_version"] == MODEL
    assert summary["als_model_version"] == MODEL
    assert summary["selection"]["winner"] == "als"
    assert summary["selection"]["reason"].startswith("ALS is served: NDCG 1.0000 >")
    assert set(summary["candidates"]) == {"als", "popularity", "itemknn", "ease"}
    assert summary["candidates"]["als"]["model_version"] == MODEL
    assert summary["candidates"]["itemknn"]["neighbours"] == 100


def test_a_better_baseline_names_the_model_after_itself(
    spark: SparkSession, tmp_path: Path
) -> None:
    """ALS's factors swapped (NDCG 0); EASE off: item-kNN 0.65 beats popularity 0.41."""
    settings = load_settings(
        "test",
        home=tmp_path,
        overrides={
            "batch": {
                "k": 2,
                "new_user_max_movies": 1,
                "heavy_user_min_movies": 3,
                "baselines": {"ease_max_items": 0},
            }
        },
    )
    lake = Lake(settings.lake_root)
    build_world(lake, settings)
    eval_dir = runs.run_dir(settings, RUN_DATE) / "model" / "eval"
    for folder, rows in (
        ("user_factors", {1: B, 2: B, 11: A, 12: A, 13: A, 14: A}),
        ("item_factors", {0: A, 1: A, 2: A, 3: B, 4: B, 5: B}),
    ):
        shutil.rmtree(eval_dir / folder)
        _write_factors(eval_dir / folder, rows)

    summary = run_evaluate(spark, lake, settings, RUN_DATE)

    assert summary["als"]["ndcg"] == 0.0 and "ease" not in summary["baselines"]
    assert summary["recommender"] == "itemknn"
    version = summary["model_version"]
    assert version.startswith("itemknn-20261122-") and summary["als_model_version"] == MODEL
    assert summary["params"] == summary["candidates"]["itemknn"]
    assert summary["params"]["recommender"] == "itemknn"
    assert summary["selection"]["reason"].startswith("itemknn is served (NDCG 0.6533)")
    rows = lake.read("model_evaluations").to_pylist()
    assert {r["model_version"] for r in rows} == {version}
    assert {r["recommender"] for r in rows} == {"als", "popularity", "itemknn"}
    # the same inputs and settings name the same model on a rerun
    assert run_evaluate(spark, lake, settings, RUN_DATE)["model_version"] == version


def _publish_baseline(
    lake: Lake, settings: Settings, kind: str, run_date: dt.date, **params: Any
) -> str:
    """A published baseline model on this world's pinned inputs, with params as recorded."""
    version = f"{kind}-{run_date:%Y%m%d}-live"
    published = dt.datetime.combine(run_date, dt.time(3), tzinfo=dt.UTC)
    pinned = runs.read_manifest(settings, RUN_DATE, "train")["input_versions"]
    upsert_model(
        lake,
        {
            "model_version": version,
            "run_date": run_date,
            "algorithm": kind,
            "params": {"recommender": kind, **params},
            "metrics": {"baselines": {kind: {"ndcg": 0.99}}},
            "input_versions": {**pinned, "bronze_events": 1},
            "git_commit": None,
            "library_versions": {},
            "artifact_path": "/nowhere",
            "status": "published",
            "status_reason": None,
            "registered_at": published,
            "published_at": published,
        },
    )
    return version


def test_a_published_item_knn_is_refitted_on_its_inputs_and_rescored(
    spark: SparkSession, tmp_path: Path
) -> None:
    """Published on 11-20 from the same pinned pairs: refitted, it scores what item-kNN scores
    here, (0 + 1/(1 + 1/log2 3) + 1 + 1) / 4, not its own 0.99."""
    settings = _settings(tmp_path)
    lake = Lake(settings.lake_root)
    build_world(lake, settings)
    pinned = runs.read_manifest(settings, RUN_DATE, "train")["input_versions"]
    version = _publish_baseline(lake, settings, "itemknn", dt.date(2026, 11, 20), neighbours=100)

    summary = run_evaluate(spark, lake, settings, RUN_DATE)

    incumbent = summary["incumbent"]
    assert incumbent["model_version"] == version and incumbent["recommender"] == "itemknn"
    assert incumbent["scored"] is True
    assert incumbent["why"] == (
        f"itemknn refitted on its inputs (watch_sessions v{pinned['watch_sessions']}, "
        f"ratings v{pinned['ratings']}) up to 2026-11-20 (final fit)"
    )
    assert incumbent["ndcg"] == pytest.approx((0 + 1 / (1 + 1 / log2(3)) + 1 + 1) / 4)
    assert incumbent["ndcg"] == summary["baselines"]["itemknn"]["ndcg"]


def test_a_published_popularity_fitted_on_this_window_is_rescored_from_its_eval_cutoff(
    spark: SparkSession, tmp_path: Path
) -> None:
    """Run date 11-22 saw this test window; its eval fit (up to 11-22 - 2 days) did not."""
    settings = _settings(tmp_path)
    lake = Lake(settings.lake_root)
    build_world(lake, settings)
    _publish_baseline(lake, settings, "popularity", dt.date(2026, 11, 22))

    summary = run_evaluate(spark, lake, settings, RUN_DATE)

    incumbent = summary["incumbent"]
    assert incumbent["scored"] is True and incumbent["why"].endswith("up to 2026-11-20 (eval fit)")
    assert incumbent["ndcg"] == pytest.approx(summary["popularity"]["ndcg"])


def test_an_incumbent_without_recorded_inputs_is_not_rescored(
    spark: SparkSession, tmp_path: Path
) -> None:
    settings = _settings(tmp_path)
    lake = Lake(settings.lake_root)
    build_world(lake, settings)
    version = _publish_baseline(lake, settings, "itemknn", dt.date(2026, 11, 20), neighbours=5)
    row = next(r for r in lake.read("models").to_pylist() if r["model_version"] == version)
    row["input_versions"] = "{}"
    lake.upsert("models", pa.Table.from_pylist([row], schema=lake.read("models").schema))

    incumbent = run_evaluate(spark, lake, settings, RUN_DATE)["incumbent"]

    assert incumbent["scored"] is False
    assert "records no watch_sessions/ratings versions" in incumbent["why"]


def test_served_lists_are_the_first_k_after_the_batch_views_re_rank() -> None:
    movies = np.array([[7, 8, 9, -1]])  # 9: unwatched, the model's third choice
    scores = np.array([[3.0, 2.0, 1.0, -np.inf]])
    relpop = np.array([0, 0, 0, 0, 0, 0, 0, 1.0, 0.5, 0.0])
    plain = ServedLists(k=2, top_n=4)
    assert plain.depth == 2 and [lst.tolist() for lst in plain(movies, scores)] == [[7, 8]]
    # 7: 1 - 2 x 1 = -1, 8: 0.5 - 2 x 0.5 = -0.5, 9: 0 - 0 = 0 -> 9, 8 shown
    debiased = ServedLists(k=2, top_n=4, weight=2.0, relative_popularity=relpop)
    assert debiased.depth == 4 and [lst.tolist() for lst in debiased(movies, scores)] == [[9, 8]]
