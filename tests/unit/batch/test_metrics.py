"""Ranking metrics @k against values worked out by hand."""

from __future__ import annotations

from math import log2

import numpy as np
import pytest

from flixlake.batch.metrics import (
    average_precision_at_k,
    catalog_coverage,
    hit_rate_at_k,
    ndcg_at_k,
    precision_at_k,
    ranking_metrics,
    recall_at_k,
)

RECS = [1, 2, 3, 4, 5]
RELEVANT = {2, 5, 9}  # hits at positions 2 and 5; item 9 never recommended


def test_precision_counts_hits_over_k() -> None:
    assert precision_at_k(RECS, RELEVANT, 5) == pytest.approx(2 / 5)
    assert precision_at_k(RECS, RELEVANT, 2) == pytest.approx(1 / 2)
    assert precision_at_k([2], {2}, 5) == pytest.approx(1 / 5)  # short lists are not rewarded


def test_recall_counts_hits_over_relevant() -> None:
    assert recall_at_k(RECS, RELEVANT, 5) == pytest.approx(2 / 3)
    assert recall_at_k(RECS, RELEVANT, 2) == pytest.approx(1 / 3)


def test_ndcg_discounts_by_position_against_the_ideal_list() -> None:
    dcg = 1 / log2(3) + 1 / log2(6)
    ideal = 1 + 1 / log2(3) + 1 / log2(4)  # three relevant items fit in k=5
    assert ndcg_at_k(RECS, RELEVANT, 5) == pytest.approx(dcg / ideal)
    assert ndcg_at_k(RECS, RELEVANT, 2) == pytest.approx((1 / log2(3)) / (1 + 1 / log2(3)))
    assert ndcg_at_k([9, 2, 5], RELEVANT, 3) == pytest.approx(1.0)
    assert ndcg_at_k([2], {2}, 5) == pytest.approx(1.0)


def test_average_precision_normalises_by_min_of_k_and_relevant() -> None:
    assert average_precision_at_k(RECS, RELEVANT, 5) == pytest.approx((1 / 2 + 2 / 5) / 3)
    assert average_precision_at_k(RECS, RELEVANT, 2) == pytest.approx((1 / 2) / 2)
    assert average_precision_at_k([9, 2, 5], RELEVANT, 3) == pytest.approx(1.0)


def test_no_hits_and_no_relevant_items_score_zero() -> None:
    for fn in (precision_at_k, recall_at_k, ndcg_at_k, average_precision_at_k):
        assert fn([7, 8], {1}, 2) == 0.0
        assert fn([7, 8], set(), 2) == 0.0


def test_k_must_be_positive() -> None:
    with pytest.raises(ValueError, match="k must be positive"):
        ndcg_at_k(RECS, RELEVANT, 0)


def test_catalog_coverage_counts_distinct_items() -> None:
    assert catalog_coverage([[1, 2], [2, 3], []], 10) == pytest.approx(0.3)
    assert catalog_coverage([], 10) == 0.0
    with pytest.raises(ValueError, match="catalog_size"):
        catalog_coverage([[1]], 0)


def test_ranking_metrics_are_per_user_and_aligned() -> None:
    got = ranking_metrics([np.array([1, 2]), np.array([3, 4])], [{2}, {9}], 2)
    assert got["precision"].tolist() == pytest.approx([0.5, 0.0])
    assert got["recall"].tolist() == pytest.approx([1.0, 0.0])
    assert got["ndcg"].tolist() == pytest.approx([1 / log2(3), 0.0])
    assert got["map"].tolist() == pytest.approx([0.5, 0.0])
    assert got["hit_rate"].tolist() == [1.0, 0.0]


def test_hit_rate_is_one_when_any_of_the_first_k_is_relevant() -> None:
    assert hit_rate_at_k([5, 6, 7], {7, 99}, 3) == 1.0
    assert hit_rate_at_k([5, 6, 7], {7, 99}, 2) == 0.0  # the hit is at position 3
    assert hit_rate_at_k([5, 6], set(), 2) == 0.0
