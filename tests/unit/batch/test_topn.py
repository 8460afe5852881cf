"""Exact top-k selection: equal to a stable full sort, with seen movies excluded."""

from __future__ import annotations

import numpy as np
import pytest
from chispa import assert_approx_df_equality
from pyspark.sql import SparkSession
from pyspark.sql.types import (
    ArrayType,
    FloatType,
    IntegerType,
    LongType,
    StructField,
    StructType,
)

from flixlake.batch.topn import ItemIndex, chunk_size, top_k_rows, top_n_per_user


def _reference(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: a stable full sort, best first, ties by lower column."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def test_small_example_by_hand() -> None:
    scores = np.array([[3.0, 1.0, 2.0], [0.0, 5.0, 5.0]], np.float32)
    idx, val = top_k_rows(scores, 2)
    assert idx.tolist() == [[0, 2], [1, 2]]
    assert val.tolist() == [[3.0, 2.0], [5.0, 5.0]]


@pytest.mark.parametrize("kind", ["normal", "ties", "mostly_inf", "tied_maxima"])
def test_matches_full_sort_on_random_data(kind: str) -> None:
    rng = np.random.default_rng(7)
    for _ in range(25):
        m, n, k = int(rng.integers(1, 30)), int(rng.integers(200, 3000)), int(rng.integers(1, 60))
        scores = rng.standard_normal((m, n)).astype(np.float32)
        if kind == "ties":
            scores = rng.integers(0, 4, (m, n)).astype(np.float32)
        elif kind == "mostly_inf":
            scores[rng.random((m, n)) < 0.98] = -np.inf
        elif kind == "tied_maxima":
            scores[:, rng.integers(0, n, 3)] = 9.0
        assert chunk_size(n, k) > 1 or n < 8 * k  # the chunked path is really exercised
        idx, val = top_k_rows(scores, k)
        ref_idx, ref_val = _reference(scores, k)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_array_equal(val, ref_val)


def test_k_larger_than_columns_and_bad_chunk() -> None:
    scores = np.array([[1.0, -np.inf, 2.0]], np.float32)
    idx, val = top_k_rows(scores, 10)
    assert idx.tolist() == [[2, 0, 1]]
    assert val.tolist() == [[2.0, 1.0, -np.inf]]
    with pytest.raises(ValueError, match="does not divide"):
        top_k_rows(np.zeros((2, 10), np.float32), 1, chunk=3)


def test_item_index_excludes_seen_and_pads_when_too_few_left() -> None:
    ids = np.array([30, 10, 20])  # unsorted on purpose
    factors = np.array([[3.0], [1.0], [2.0]], np.float32)
    index = ItemIndex.build(ids, factors, k=2)
    users = np.array([[1.0], [1.0], [-1.0]], np.float32)
    # user 0 saw nothing, user 1 saw 30 and 20 (and an unknown 99), user 2 saw nothing
    movies, scores = index.recommend(users, np.array([0, 3, 0]), np.array([30, 99, 20]))
    assert movies.tolist() == [[30, 20], [10, -1], [10, 20]]
    assert scores[1, 1] == -np.inf
    assert scores[2].tolist() == [-1.0, -2.0]


def test_top_n_per_user_equals_brute_force(spark: SparkSession) -> None:
    rng = np.random.default_rng(3)
    n_items, rank, n = 60, 3, 5
    item_ids = np.arange(100, 100 + n_items)
    items = rng.standard_normal((n_items, rank)).astype(np.float32)
    users = rng.standard_normal((4, rank)).astype(np.float32)
    user_ids = [1, 2, 3, 4]
    best_of_user_1 = item_ids[np.argsort(-(items @ users[0]))[:3]]
    seen = [(1, int(m)) for m in best_of_user_1]  # user 1's three favourites are seen
    seen += [(3, int(m)) for m in item_ids[2:]]  # user 3 saw all but two movies
    seen += [(None, 101), (2, None)]  # null rows are ignored

    factor_schema = StructType(
        [StructField("id", IntegerType()), StructField("features", ArrayType(FloatType()))]
    )
    user_df = spark.createDataFrame(
        [(u, users[i].tolist()) for i, u in enumerate(user_ids)], factor_schema
    )
    item_df = spark.createDataFrame(
        [(int(m), items[i].tolist()) for i, m in enumerate(item_ids)], factor_schema
    )
    seen_df = spark.createDataFrame(
        seen,
        StructType([StructField("user_id", LongType()), StructField("movie_idx", IntegerType())]),
    )
    got = top_n_per_user(spark, user_df, item_df, seen_df, n)

    expected_rows = []
    for i, u in enumerate(user_ids):
        scores = items @ users[i]
        excluded = {m for su, m in seen if su == u}
        ranked = [j for j in np.argsort(-scores, kind="stable") if int(item_ids[j]) not in excluded]
        for r, j in enumerate(ranked[:n], start=1):
            expected_rows.append((u, r, int(item_ids[j]), float(scores[j])))
    expected = spark.createDataFrame(
        expected_rows,
        StructType(
            [
                StructField("user_id", LongType(), True),
                StructField("rank", IntegerType(), True),
                StructField("movie_idx", IntegerType(), True),
                StructField("score", FloatType(), True),
            ]
        ),
    )
    assert len([r for r in expected_rows if r[0] == 3]) == 2  # only two unseen movies left
    assert not {(1, int(m)) for m in best_of_user_1} & {(r[0], r[2]) for r in expected_rows}
    assert_approx_df_equality(
        got.orderBy("user_id", "rank"),
        expected.orderBy("user_id", "rank"),
        precision=1e-5,
        ignore_nullable=True,
    )
