"""The exploration variant: uniform random answers from the catalog, recorded as such, needing no
model; its share of users is validated. Expected values are written out from the fixtures."""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from flixlake.batch.catalog import upsert_movies
from flixlake.config import ConfigError, ExperimentConfig, load_settings
from flixlake.experiments.routing import Experiment, ExperimentError, Variant, bucket
from flixlake.lake.registry import EXPLORE, request_lineage, resolve_model_refs
from flixlake.lake.store import Lake
from flixlake.lake.tables import SERVED_RECOMMENDATIONS
from flixlake.serving.monitoring import ServingMetrics
from flixlake.serving.recommender import Recommender, explore_pick
from flixlake.serving.refresh import ViewRefresher
from flixlake.serving.views import MovieCatalog, activity_from_table, load_catalog
from flixlake.testing import record_published_model

MOVIES = [f"m-{i:02d}" for i in range(30)]
SPLIT = {
    "name": "explore-test",
    "variants": [
        {"name": "control", "model": "current", "percent": 70},
        {"name": "explore", "model": "explore", "percent": 30},
    ],
}


def test_explore_pick_is_distinct_unseen_and_from_the_pool() -> None:
    pool = list(range(100, 140))
    seen = {100, 105, 139, 7}  # 7 is not in the pool
    rng = random.Random(1)
    for _ in range(200):
        picked = explore_pick(pool, seen, 10, rng)
        assert len(picked) == 10 == len(set(picked))
        assert set(picked) <= set(pool) - seen


def test_explore_pick_returns_every_unseen_movie_when_fewer_are_left() -> None:
    picked = explore_pick([1, 2, 3, 4, 5], {2, 4}, 20, random.Random(3))
    assert sorted(picked) == [1, 3, 5]
    assert explore_pick([], None, 20, random.Random(3)) == []


def test_explore_pick_is_uniform_over_unseen_movies() -> None:
    """Every unseen movie is shown about k / (n - |seen|) of the time, whatever its position."""
    pool = list(range(20))
    seen = {0, 1, 2, 3}  # the first positions: a draw that favoured the front would show
    rng = random.Random(7)
    draws = 20_000
    counts = Counter(m for _ in range(draws) for m in explore_pick(pool, seen, 4, rng))
    expected = draws * 4 / 16  # 5,000 per unseen movie
    assert set(counts) == set(range(4, 20))
    # binomial sd = sqrt(20000 * 0.25 * 0.75) ~ 61; 5 sd apart would be a bias
    assert all(abs(counts[m] - expected) < 5 * 61 for m in counts), counts
    # and the first slot is uniform too (an order bias would put low ids first)
    firsts = Counter(explore_pick(pool, seen, 4, rng)[0] for _ in range(16_000))
    assert all(abs(firsts[m] - 1000) < 5 * 31 for m in range(4, 20)), firsts


def explore_lake(tmp_path: Path) -> Lake:
    """A catalog of 30 movies, model m1 published with a batch view of 25 movies per user."""
    lake = Lake(tmp_path / "lake")
    upsert_movies(lake, MOVIES)
    rows = [
        {
            "user_id": u,
            "rank": r + 1,
            "movie_id": MOVIES[(u + r) % 30],
            "score": 1.0 / (r + 1),
            "model_version": "m1",
        }
        for u in range(1, 41)
        for r in range(25)
    ]
    lake.append("batch_recommendations", pa.Table.from_pylist(rows))
    record_published_model(lake, "m1", dt.date(2026, 11, 20))
    return lake


def test_explore_users_get_random_catalog_movies_and_the_others_their_model(
    tmp_path: Path,
) -> None:
    lake = explore_lake(tmp_path)
    settings = load_settings(
        "test", home=tmp_path, overrides={"serving": {"experiment": SPLIT, "results": 5}}
    )
    experiment = Experiment.from_config(settings.serving.experiment)
    catalog = MovieCatalog()
    recommender = Recommender(catalog, experiment, results=5, seed=11)
    refresher = ViewRefresher(lake, settings.serving, recommender, ServingMetrics())
    refresher.refresh_catalog()
    refresher.refresh_models()
    state = recommender.state
    assert state.model_versions == ("m1", EXPLORE)
    assert state.views[1] is None  # nothing was loaded for the exploration variant

    explorers = [u for u in range(1, 41) if bucket("explore-test", u) >= 7000]
    controls = [u for u in range(1, 41) if bucket("explore-test", u) < 7000]
    assert explorers and controls
    for user in controls:
        answer = recommender.recommend(user)
        assert (answer.variant, answer.model_version, answer.source) == ("control", "m1", "batch")
        assert answer.body.decode().split(",") == [MOVIES[(user + r) % 30] for r in range(5)]
    shown: set[str] = set()
    for user in explorers:
        answers = {recommender.recommend(user).body for _ in range(5)}
        assert len(answers) > 1  # drawn afresh for every request
        for body in answers:
            movies = body.decode().split(",")
            assert len(movies) == 5 == len(set(movies)) and set(movies) <= set(MOVIES)
            shown.update(movies)
        answer = recommender.recommend(user)
        assert (answer.variant, answer.model_version, answer.source) == (
            "explore",
            "explore",
            "explore",
        )
    assert len(shown) > 20  # not a fixed list: most of the 30 movies came up


def test_readiness_needs_no_batch_view_for_the_exploration_variant(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    upsert_movies(lake, MOVIES)
    settings = load_settings("test", home=tmp_path, overrides={"serving": {"experiment": SPLIT}})
    recommender = Recommender(MovieCatalog(), Experiment.from_config(settings.serving.experiment))
    refresher = ViewRefresher(lake, settings.serving, recommender, ServingMetrics())
    refresher.refresh_catalog()
    refresher.refresh_models()
    _, reasons = refresher.readiness()
    missing = [r for r in reasons if "no batch view" in r]
    assert missing == ["no batch view loaded for variant(s) control"]  # not "explore"
    assert refresher.health()["variants"]["explore"]["model_version"] == "explore"


def test_an_explore_answer_skips_movies_the_user_has_seen(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    upsert_movies(lake, MOVIES[:8])
    catalog = MovieCatalog()
    static = load_catalog(lake, catalog)
    only_explore = Experiment(
        "e", (Variant("control", "current", 50.0), Variant("explore", EXPLORE, 50.0))
    )
    recommender = Recommender(catalog, only_explore, results=20, seed=5)
    assert recommender.recommend(3).body == b""  # no catalog yet: the service says 503
    recommender.install_catalog(static)
    user = next(u for u in range(1, 100) if only_explore.assign(u).explores)
    seen_ids = ["m-01", "m-04", "m-06"]
    activity = pa.Table.from_pylist(
        [{"user_id": user, "watched_movies": seen_ids[:2], "rated_movies": seen_ids[2:]}]
    )
    recommender.install_speed(activity_from_table(activity, catalog))
    movies = recommender.recommend(user).body.decode().split(",")
    assert sorted(movies) == ["m-00", "m-02", "m-03", "m-05", "m-07"]


@pytest.mark.parametrize(("percents", "ok"), [((50, 50), True), ((40, 60), False), ((100,), True)])
def test_at_most_half_of_the_users_explore(tmp_path: Path, percents: tuple, ok: bool) -> None:
    variants = [{"name": "control", "model": "current", "percent": percents[0]}]
    if len(percents) > 1:
        variants.append({"name": "explore", "model": "explore", "percent": percents[1]})
    overrides = {"serving": {"experiment": {"name": "e", "variants": variants}}}
    if ok:
        load_settings("test", home=tmp_path, overrides=overrides)
        return
    with pytest.raises(
        ConfigError, match=r"serving\.experiment\.variants.*at most 50% may explore"
    ):
        load_settings("test", home=tmp_path, overrides=overrides)
    with pytest.raises(ExperimentError, match="more than 50%"):
        Experiment("e", (Variant("control", "current", 40.0), Variant("x", EXPLORE, 60.0)))


def test_explore_names_no_model_and_its_answers_say_so(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    assert resolve_model_refs(lake, {EXPLORE}) == {EXPLORE: None}
    experiment = Experiment.from_config(ExperimentConfig.model_validate(SPLIT))
    assert experiment.models == ("current",) and experiment.explore_percent == 30.0
    now = dt.datetime(2026, 11, 22, 9, tzinfo=dt.UTC)
    row = {
        "source": "served_recommendations",
        "source_partition": 0,
        "source_offset": 1,
        "request_id": "r-1",
        "served_at": now,
        "user_id": 4,
        "experiment": "explore-test",
        "variant": "explore",
        "model_version": EXPLORE,
        "items": ["m-01", "m-02"],
        "status": 200,
        "latency_ms": 0.2,
        "server": "s",
        "ingest_batch": "b",
        "ingested_at": now,
        "served_date": now.date(),
    }
    lake.append(
        "served_recommendations",
        pa.Table.from_pylist([row], schema=SERVED_RECOMMENDATIONS.schema),
    )
    lineage = request_lineage(lake, "r-1")  # no models table: it must not look a model up
    assert lineage["model_lineage"] is None
    assert "exploration" in lineage["note"]
