"""What the stream feeds the service is bounded and never reaches an answer unless it is in the
catalog (the ``movies`` table); expected values are written out from the fixture rows."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa

from flixlake.batch.catalog import upsert_movies
from flixlake.config import ExperimentConfig
from flixlake.experiments.routing import Experiment
from flixlake.lake.store import Lake
from flixlake.lake.tables import SPEED_TRENDING, SPEED_USER_ACTIVITY
from flixlake.serving.recommender import Recommender
from flixlake.serving.views import (
    MovieCatalog,
    activity_from_table,
    load_catalog,
    trending_order,
)

NOW = dt.datetime(2026, 11, 22, 8, 0, tzinfo=dt.UTC)


def trending_table(rows: list[tuple[int, str, int]]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "window": f"{seconds}s",
                "window_seconds": seconds,
                "movie_id": movie,
                "watchers": watchers,
                "as_of": NOW,
                "updated_batch": 1,
                "updated_at": NOW,
            }
            for seconds, movie, watchers in rows
        ],
        schema=SPEED_TRENDING.schema,
    )


def activity_table(rows: list[tuple[int, list[str], list[str], int]]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "user_id": user,
                "watched_movies": watched,
                "rated_movies": rated,
                "first_seen": NOW,
                "last_seen": NOW + dt.timedelta(seconds=offset),
                "since": None,
                "model_version": None,
                "updated_batch": 1,
                "updated_at": NOW,
            }
            for user, watched, rated, offset in rows
        ],
        schema=SPEED_USER_ACTIVITY.schema,
    )


def catalog_of(ids: list[str], capacity: int = 100) -> MovieCatalog:
    catalog = MovieCatalog(capacity=capacity)
    catalog.indices(pa.array(ids), add=True)
    return catalog


def test_trending_serves_only_catalog_movies_and_never_grows_the_catalog() -> None:
    catalog = catalog_of(["a", "b", "c"])
    table = trending_table([(3600, "ghost", 99), (3600, "b", 5), (86400, "a", 7), (86400, "x", 6)])
    ranked = trending_order(table, catalog)
    assert [catalog.ids[i] for i in ranked] == ["b", "a"]
    assert len(catalog) == 3  # "ghost" and "x" were looked up, not added
    assert [catalog.ids[i] for i in trending_order(table, catalog, limit=1)] == ["b"]


def test_activity_is_bounded_in_users_and_movies_per_user() -> None:
    catalog = catalog_of(["a", "b", "c", "d"])
    table = activity_table(
        [
            (1, ["a", "b", "c"], ["d"], 0),  # oldest: dropped by max_users=2
            (2, ["a", "b", "c", "d"], ["a"], 5),
            (3, [f"junk-{i}" for i in range(1000)], ["c"], 9),
        ]
    )
    activity = activity_from_table(table, catalog, max_users=2, max_seen=2)
    assert activity.users.tolist() == [2, 3]
    assert activity.seen(1) is None
    assert {catalog.ids[i] for i in activity.seen(2) or set()} == {"a", "b"}  # 2 of 4 kept
    assert {catalog.ids[i] for i in activity.seen(3) or set()} == {"c"}  # junk is not a movie
    assert len(catalog) == 4 and activity.movies.shape[0] == 3


def test_the_catalog_refuses_movies_beyond_its_capacity() -> None:
    catalog = catalog_of(["a", "b"], capacity=3)
    found = catalog.indices(pa.array(["c", "d", "a", None]), add=True)
    assert found.tolist() == [2, -1, 0, -1]
    assert catalog.ids == ["a", "b", "c"] and catalog.refused == 1


def test_without_a_batch_view_answers_come_from_trending_then_the_catalog(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    upsert_movies(lake, ["m-03", "m-01", "m-02"], [{"movie_id": "m-02", "title": "Two"}])
    catalog = MovieCatalog()
    static = load_catalog(lake, catalog)
    # movies with metadata first, then the rest in movie_idx order (sorted ids at first upsert)
    assert [catalog.ids[i] for i in static] == ["m-02", "m-01", "m-03"]
    recommender = Recommender(catalog, Experiment.from_config(ExperimentConfig()), results=2)
    assert recommender.recommend(7).body == b""  # no catalog installed yet: nothing to serve
    recommender.install_catalog(static)
    answer = recommender.recommend(7)
    assert (answer.body, answer.source, answer.reason) == (
        b"m-02,m-01",
        "fallback",
        "no_batch_view",
    )
    trending = trending_order(trending_table([(3600, "m-03", 4), (3600, "nope", 9)]), catalog)
    recommender.install_speed(trending=trending)
    assert recommender.recommend(7).body == b"m-03,m-02"
    assert np.array_equal(recommender.state.trending, trending)
