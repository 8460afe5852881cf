"""The synthetic world: deterministic, MLiP-shaped, with taste structure a recommender can learn."""

from __future__ import annotations

import re

import numpy as np
import pytest

from flixlake.sim.world import GENDERS, GENRES, OCCUPATIONS, SeenPairs, World

SLUG_RE = re.compile(r"[a-z]+(\+[a-z]+)*\+\d{4}")


@pytest.fixture(scope="module")
def world() -> World:
    return World.build(n_users=20_000, n_movies=400, seed=3)


def test_same_seed_same_world_other_seed_other_world() -> None:
    a = World.build(n_users=500, n_movies=60, seed=11)
    b = World.build(n_users=500, n_movies=60, seed=11)
    c = World.build(n_users=500, n_movies=60, seed=12)
    assert a.movie_ids == b.movie_ids
    np.testing.assert_array_equal(a.user_taste, b.user_taste)
    np.testing.assert_array_equal(a.user_occupation, b.user_occupation)
    assert a.movie_ids != c.movie_ids
    assert not np.array_equal(a.user_cluster, c.user_cluster)


def test_movies_have_unique_mlip_slugs_and_sane_attributes(world: World) -> None:
    assert world.n_movies == 400
    assert len(set(world.movie_ids)) == 400
    for slug, title, year in zip(
        world.movie_ids, world.movie_titles, world.movie_years.tolist(), strict=True
    ):
        assert SLUG_RE.fullmatch(slug), slug
        assert slug.endswith(f"+{year}")
        assert slug == f"{title.lower().replace(' ', '+')}+{year}"
    assert world.movie_years.min() >= 1930 and world.movie_years.max() <= 2026
    genres_per_movie = world.movie_genres.sum(axis=1)
    assert genres_per_movie.min() == 1 and genres_per_movie.max() == 3
    assert world.movie_runtime.min() >= 80 and world.movie_runtime.max() <= 180
    assert world.movie_popularity.sum() == pytest.approx(1.0)
    # Zipf-like: the most popular movie is ~n times the least popular one
    ranked = np.sort(world.movie_popularity)[::-1]
    assert ranked[0] / ranked[-1] == pytest.approx(400.0)
    assert world.movie_genre_names(0) == [
        GENRES[g] for g in range(len(GENRES)) if world.movie_genres[0, g]
    ]


def test_users_have_movielens_attributes_and_heavy_tailed_activity(world: World) -> None:
    assert world.n_users == 20_000
    assert world.user_age.min() >= 13 and world.user_age.max() <= 80
    assert set(np.unique(world.user_gender).tolist()) == {0, 1}
    assert len(GENDERS) == 2
    assert world.user_occupation.min() >= 0
    assert world.user_occupation.max() < len(OCCUPATIONS)
    k12 = world.user_occupation == OCCUPATIONS.index("K-12 student")
    retired = world.user_occupation == OCCUPATIONS.index("retired")
    assert k12.any() and retired.any()
    assert np.median(world.user_age[k12]) < 18
    assert np.median(world.user_age[retired]) >= 55
    activity = np.sort(world.user_activity)[::-1]
    assert activity.mean() == pytest.approx(0.3, rel=0.05)
    # a few heavy users: the top 1% visit far more than the median user
    top_share = activity[: world.n_users // 100].sum() / activity.sum()
    assert top_share > 0.05
    assert activity[world.n_users // 100] > 5 * np.median(activity)


def test_seen_pairs_tracks_user_movie_pairs() -> None:
    seen = SeenPairs(n_movies=10)
    assert not seen.contains(np.array([0]), np.array([0]))[0]
    seen.add(np.array([1, 2, 1]), np.array([3, 4, 3]))
    assert len(seen) == 2
    np.testing.assert_array_equal(
        seen.contains(np.array([1, 2, 1, 3]), np.array([3, 4, 4, 3])), [True, True, False, False]
    )
    seen.add(np.array([0]), np.array([9]))
    assert len(seen) == 3
    assert seen.contains(np.array([0]), np.array([9]))[0]


def test_chooser_only_picks_available_movies(world: World) -> None:
    available = np.zeros(world.n_movies, dtype=bool)
    available[[3, 7]] = True
    rng = np.random.default_rng(0)
    picks = world.chooser(available).sample(np.arange(500), rng)
    assert set(np.unique(picks).tolist()) == {3, 7}


def test_chooser_avoids_movies_already_seen(world: World) -> None:
    chooser = world.chooser()
    users = np.arange(2_000)
    favourite = chooser.top_movies(1)[world.user_cluster[users], 0]
    seen = SeenPairs(world.n_movies)
    seen.add(users, favourite)
    picks = chooser.sample(users, np.random.default_rng(1), seen)
    assert not np.any(picks == favourite)
    unseen_picks = chooser.sample(users, np.random.default_rng(1))
    assert np.any(unseen_picks == favourite)  # without the seen set it is a likely pick


def test_choices_follow_taste_not_just_popularity(world: World) -> None:
    """Users pick movies whose vector matches their taste far more often than at random."""
    rng = np.random.default_rng(2)
    users = rng.integers(0, world.n_users, 5_000)
    picks = world.chooser().sample(users, rng)
    chosen = world.affinity(users, picks)
    random = world.affinity(users, rng.integers(0, world.n_movies, users.size))
    assert chosen.mean() > random.mean() + world.affinity_std


def test_attributes_shift_genre_preferences(world: World) -> None:
    rng = np.random.default_rng(4)
    users = np.arange(world.n_users)
    picks = world.chooser().sample(users, rng)
    romance = world.movie_genres[picks, GENRES.index("Romance")]
    animation = world.movie_genres[picks, GENRES.index("Animation")]
    female = world.user_gender == 1
    young, old = world.user_age < 25, world.user_age >= 50
    assert romance[female].mean() > 1.2 * romance[~female].mean()
    assert animation[young].mean() > 1.2 * animation[old].mean()


def test_watch_outcome_grows_with_affinity(world: World) -> None:
    rng = np.random.default_rng(5)
    users = rng.integers(0, world.n_users, 20_000)
    movies = rng.integers(0, world.n_movies, 20_000)
    minutes, rating, rated = world.watch_outcome(users, movies, rng)
    runtime = world.movie_runtime[movies]
    assert np.all((minutes >= 1) & (minutes <= runtime))
    assert set(np.unique(rating).tolist()) <= {1, 2, 3, 4, 5}
    assert 0.1 < rated.mean() < 0.5
    affinity = world.affinity(users, movies)
    low, high = affinity < np.quantile(affinity, 0.25), affinity > np.quantile(affinity, 0.75)
    assert minutes[high].mean() > 1.5 * minutes[low].mean()
    assert rating[high].mean() > rating[low].mean() + 0.5


def test_build_rejects_an_empty_world() -> None:
    with pytest.raises(ValueError, match="at least one user and one movie"):
        World.build(n_users=0, n_movies=10, seed=1)
