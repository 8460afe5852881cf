"""Training on the shapes real histories have and the synthetic world never made.

Run date 1998-04-23 (timestamps from 1997: long ago), test window 04-22..23, validation window
04-20..21 (``conf/test.yaml``). Movies 0-5 are watched and liked by users 1-6; besides them:

* user 20 only ever gave 1-2 stars (every pair has confidence <= 0), once to movie 7, which
  nobody else watched (a movie without positive signal);
* movie 6 has one viewer (user 1); user 30 has one event, on 1997-09-20.

Rank 8 over 8 movies, one of them without positive signal: the item factors span at most 7
dimensions, so user 20's normal equations are singular -- the crash MovieLens showed on main.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.ml.recommendation import ALS
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from flixlake.batch import training
from flixlake.batch.evaluation import load_windowed_inputs, run_evaluate
from flixlake.batch.features import TimeWindows, interactions_df, with_positive_signal
from flixlake.batch.training import one_line_error, run_train
from flixlake.config import PROJECT_ROOT, Settings, load_settings
from flixlake.lake import runs
from flixlake.lake.store import Lake
from flixlake.lake.tables import MOVIES, RATINGS, WATCH_SESSIONS

RUN_DATE = dt.date(1998, 4, 23)
NEGATIVE_USER, ONE_EVENT_USER = 20, 30
ONE_VIEWER_MOVIE, DISLIKED_MOVIE = 6, 7
LIKERS = range(1, 7)
LIKED = range(0, 6)
GRID = [{"rank": 8, "reg_param": 0.1, "alpha": 10.0}]


def _at(day: dt.date, hour: int = 20) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), tzinfo=dt.UTC)


def _watch(user: int, movie: int, day: dt.date, minutes: int = 60) -> dict[str, Any]:
    return {
        "user_id": user,
        "movie_id": f"m{movie}",
        "movie_idx": movie,
        "minutes_watched": minutes,
        "max_minute": minutes - 1,
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
        "rated_at": _at(day, 21),
    }


def write_history(
    lake: Lake,
    settings: Settings,
    validation: bool = True,
    test: bool = True,
    negative_only: bool = False,
) -> None:
    """Silver tables + compact manifest of the world above (windows optionally left empty)."""
    watches, ratings = [], []
    for i, user in enumerate(LIKERS):
        for j, movie in enumerate(LIKED):
            day = dt.date(1997, 9 + (i + j) % 4, 1 + i + j)
            if j == 4 and validation:
                day = dt.date(1998, 4, 20 + i % 2)
            if j == 5 and test:
                day = dt.date(1998, 4, 22 + i % 2)
            watches.append(_watch(user, (movie + i) % 6, day))
            stars = 1 if negative_only else 4 + j % 2
            ratings.append(_rating(user, (movie + i) % 6, stars, day))
    watches.append(_watch(1, ONE_VIEWER_MOVIE, dt.date(1997, 11, 2)))
    watches.append(_watch(ONE_EVENT_USER, 0, dt.date(1997, 9, 20), minutes=3))
    for movie, stars, day in (
        (0, 2, dt.date(1997, 12, 1)),
        (DISLIKED_MOVIE, 1, dt.date(1998, 1, 5)),
    ):
        watches.append(_watch(NEGATIVE_USER, movie, day, minutes=10))
        ratings.append(_rating(NEGATIVE_USER, movie, stars, day))
    if negative_only:
        watches = [w for w in watches if w["user_id"] == NEGATIVE_USER]
    lake.append("watch_sessions", pa.Table.from_pylist(watches, schema=WATCH_SESSIONS.schema))
    lake.append("ratings", pa.Table.from_pylist(ratings, schema=RATINGS.schema))
    lake.append(
        "movies",
        pa.Table.from_pylist(
            [{"movie_idx": m, "movie_id": f"m{m}"} for m in range(8)], schema=MOVIES.schema
        ),
    )
    versions = lake.versions(["watch_sessions", "ratings", "movies"])
    runs.write_manifest(
        settings, RUN_DATE, "compact", {"bronze_version": 1, "output_versions": versions}
    )


def _settings(home: Path, **batch: Any) -> Settings:
    als = {"grid": GRID, "max_iter": 3, "search": {"trials": 2, "rank": [8, 8]}}
    return load_settings("test", home=home, overrides={"batch": {"k": 3, "als": als, **batch}})


def _ids(path: str) -> set[int]:
    return set(pq.read_table(path).column("id").to_pylist())


@pytest.fixture(scope="module")
def trained(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings = _settings(tmp_path_factory.mktemp("shapes"))
    lake = Lake(settings.lake_root)
    write_history(lake, settings)
    train = run_train(spark, lake, settings, RUN_DATE)
    return {"settings": settings, "lake": lake, "train": train}


def test_the_singular_matrix_comes_from_users_without_positive_pairs(
    spark: SparkSession, tmp_path: Path
) -> None:
    """The cause, reproduced: the same fit crashes with them and trains without them."""
    settings = _settings(tmp_path)
    lake = Lake(settings.lake_root)
    write_history(lake, settings)
    windows = TimeWindows.for_run_date(RUN_DATE, settings.batch)
    versions = runs.read_manifest(settings, RUN_DATE, "compact")["output_versions"]
    watches, ratings = load_windowed_inputs(spark, lake, versions, windows)
    pairs = interactions_df(watches, ratings, settings.batch.confidence)
    als = ALS(
        rank=8, regParam=0.1, alpha=10.0, maxIter=3, seed=1, implicitPrefs=True,
        userCol="user_id", itemCol="movie_idx", ratingCol="confidence",
    )  # fmt: skip
    with (
        pytest.raises(Exception, match="SingularMatrixException") as caught,
        training.quiet_task_errors(spark),
    ):
        als.fit(pairs)
    assert one_line_error(caught.value).startswith("SingularMatrixException: LAPACK.dppsv returned")
    model = als.fit(pairs.transform(with_positive_signal))
    users = {r["id"] for r in model.userFactors.collect()}
    items = {r["id"] for r in model.itemFactors.collect()}
    assert NEGATIVE_USER not in users and ONE_EVENT_USER in users
    assert DISLIKED_MOVIE not in items and ONE_VIEWER_MOVIE in items


def test_real_shapes_train_and_keep_negative_only_users_out_of_als(
    trained: dict[str, Any],
) -> None:
    train = trained["train"]
    assert [t["status"] for t in train["search"]] == ["ok", "ok"]
    assert train["fit_failures"] == []
    for which in ("eval", "final"):
        users = _ids(train["factors"][which]["users"])
        items = _ids(train["factors"][which]["items"])
        assert NEGATIVE_USER not in users, which
        assert ONE_EVENT_USER in users  # one 3-minute watch in 1997 is still a positive pair
        assert DISLIKED_MOVIE not in items
        assert ONE_VIEWER_MOVIE in items
    counts = train["counts"]
    assert counts["final_window_users"] == len(LIKERS) + 2  # + the negative and one-event users
    assert counts["final_users"] == len(LIKERS) + 1
    assert (counts["final_window_items"], counts["final_items"]) == (8, 7)
    assert not (Path(train["artifact_path"]).parent / training.TRACE_LOG).exists()


def test_negative_only_users_are_still_seen_in_evaluation(
    spark: SparkSession, trained: dict[str, Any]
) -> None:
    summary = run_evaluate(spark, trained["lake"], trained["settings"], RUN_DATE)
    assert summary["als"]["n_users"] == len(LIKERS)  # each liked one new movie in the test window
    assert summary["counts"]["als_fallback_users"] == 0


def test_empty_validation_window_trains_the_default_point(
    spark: SparkSession, tmp_path: Path
) -> None:
    settings = _settings(tmp_path)
    lake = Lake(settings.lake_root)
    write_history(lake, settings, validation=False)
    train = run_train(spark, lake, settings, RUN_DATE)
    assert train["search"] == []
    assert "validation window" in train["search_summary"]["skipped"]
    assert train["search_summary"]["chosen_trial"] is None
    assert {k: train["params"][k] for k in ("rank", "reg_param", "alpha")} == GRID[0]
    assert train["counts"]["final_users"] == len(LIKERS) + 1


def test_empty_test_window_trains_and_evaluates_nobody(spark: SparkSession, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    lake = Lake(settings.lake_root)
    write_history(lake, settings, test=False)
    run_train(spark, lake, settings, RUN_DATE)
    summary = run_evaluate(spark, lake, settings, RUN_DATE)
    assert summary["als"]["n_users"] == 0
    assert summary["counts"]["users_evaluated"] == 0


def test_a_failing_candidate_is_recorded_and_skipped(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first search trial gets input Spark cannot fit (null confidences); the second trains."""
    settings = _settings(tmp_path)
    lake = Lake(settings.lake_root)
    write_history(lake, settings)
    real_fit_input = training.fit_input
    calls = []

    def first_call_breaks(df: Any, params: Any) -> Any:
        calls.append(params)
        data = real_fit_input(df, params)
        if len(calls) == 1:
            return data.withColumn("confidence", F.lit(None).cast("float"))
        return data

    monkeypatch.setattr(training, "fit_input", first_call_breaks)
    train = run_train(spark, lake, settings, RUN_DATE)
    first, second = train["search"]
    assert first["status"] == "failed" and first["ndcg"] is None
    assert first["error"] and "\n" not in first["error"]
    assert second["status"] == "ok"
    assert train["search_summary"] == {**train["search_summary"], "failed": 1, "chosen_trial": 1}
    trace = (Path(train["artifact_path"]).parent / training.TRACE_LOG).read_text()
    assert "search trial 0 failed" in trace and "Traceback" in trace


def test_no_trainable_candidate_is_one_line_and_exit_code_4(tmp_path: Path) -> None:
    """Only 1-2 star ratings before the test window: the job ends with code 4, nothing else."""
    settings = _settings(tmp_path)
    write_history(Lake(settings.lake_root), settings, negative_only=True)
    env = {**os.environ, "FLIXLAKE_ENV": "test"}
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "jobs" / "train_model.py"), "--run-date",
         RUN_DATE.isoformat(), "--home", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 4, result.stderr
    assert result.stdout == ""
    failure = [line for line in result.stderr.splitlines() if line.startswith("training failed")]
    assert failure == [
        "training failed: no watch or 3-5 star rating before the test window (1998-04-22): "
        "nothing positive to train on"
    ]
    assert "Traceback" not in result.stderr
    with pytest.raises(runs.MissingStepError):
        runs.read_manifest(settings, RUN_DATE, "train")
