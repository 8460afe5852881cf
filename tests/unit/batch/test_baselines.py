"""Item-kNN and EASE scorers: exact top-N (seen and non-positive excluded) against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from flixlake.batch.baselines import ItemScorer, fit_item_scorer


def _reference(
    history: sp.csr_matrix, weights: np.ndarray, seen: list[np.ndarray], n: int
) -> list[list[int]]:
    """Brute force: every movie's score, seen and <= 0 dropped, sorted by (-score, movie)."""
    scores = np.asarray(history.toarray(), np.float64) @ np.asarray(weights, np.float64)
    out = []
    for row, drop in zip(scores, seen, strict=True):
        movies = [m for m in range(row.size) if row[m] > 0 and m not in set(drop.tolist())]
        out.append(sorted(movies, key=lambda m: (-row[m], m))[:n])
    return out


def _world(seed: int, users: int, movies: int) -> tuple[sp.csr_matrix, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    history = sp.csr_matrix((rng.random((users, movies)) < 0.15).astype(np.float32))
    seen = []
    for u in range(users):
        liked = history[u].indices
        extra = rng.choice(movies, size=int(rng.integers(0, 4)), replace=False)
        seen.append(np.unique(np.r_[liked, extra]).astype(np.int64))  # seen: liked + disliked
    return history, seen


@pytest.mark.parametrize("dense", [False, True])
def test_top_n_matches_brute_force(dense: bool) -> None:
    rng = np.random.default_rng(3)
    for trial in range(6):
        history, seen = _world(trial, users=int(rng.integers(1, 700)), movies=40)
        # quarter steps: float32 sums are exact, so ties are real ties; negatives and zeros too
        raw = (rng.integers(-4, 5, (40, 40)) / 4).astype(np.float32)
        raw[rng.random((40, 40)) < 0.6] = 0.0
        weights = raw if dense else sp.csr_matrix(raw)
        scorer = ItemScorer("test", weights)
        lengths = np.array([s.size for s in seen])
        movies, scores = scorer.top_n(history, lengths, np.concatenate(seen), 7, block=64)
        got = [row[row >= 0].tolist() for row in movies]
        assert got == _reference(history, raw, seen, 7), trial
        assert np.all(np.isneginf(scores[movies < 0]))
        assert np.all(scores[movies >= 0] > 0)


def test_recommend_lists_drop_seen_movies_and_rows_without_signal() -> None:
    # cosine-like weights: m0 ~ m1 0.5, m1 ~ m2 0.9, m3 has no neighbour
    w = np.zeros((4, 4), np.float32)
    w[0, 1] = w[1, 0] = 0.5
    w[1, 2] = w[2, 1] = 0.9
    history = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], np.float32))
    seen = [np.array([0]), np.array([1, 2]), np.array([3])]
    for weights in (w, sp.csr_matrix(w)):
        lists = ItemScorer("t", weights).recommend(history, seen, 3)
        assert [lst.tolist() for lst in lists] == [[1], [0], []]


def test_fit_item_scorer_by_kind() -> None:
    users = np.array([10, 10, 20, 20, 30])
    movies = np.array([0, 1, 0, 1, 2])
    knn = fit_item_scorer("itemknn", users, movies, 4, {"neighbours": 5})
    assert knn.name == "itemknn" and sp.issparse(knn.weights) and knn.n_items == 4
    # m0 and m1 are liked by the same two users: cosine 1; m2 shares nobody
    assert knn.weights[0, 1] == pytest.approx(1.0) and knn.weights[0, 2] == 0
    ease = fit_item_scorer("ease", users, movies, 4, {"l2": 1.0})
    assert ease.name == "ease" and isinstance(ease.weights, np.ndarray)
    assert np.all(np.diag(ease.weights) == 0)
    with pytest.raises(ValueError, match="no item scorer of kind 'als'"):
        fit_item_scorer("als", users, movies, 4, {})
