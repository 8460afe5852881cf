"""Ranking metrics @k with binary relevance, in plain numpy, for offline evaluation.

Each per-user function takes the recommended list (best first) and the set of relevant items
(what the user really watched later). Conventions, as in most recommender literature:

* precision@k = hits in the first k / k (a list shorter than k is not rewarded);
* recall@k = hits in the first k / |relevant|;
* NDCG@k = DCG / ideal DCG, gains 1 / log2(position + 1), ideal = min(k, |relevant|) hits;
* AP@k = sum of precision@i at each hit position i <= k / min(k, |relevant|) (MAP = its mean);
* hit rate@k = 1 when any of the first k is relevant, else 0 (its mean: the share of users hit;
  a per-user 0/1, so a segment's hit rate gets a binomial (Wilson) interval in the audit);
* catalog coverage = distinct items recommended over all lists / catalog size.

A user with no relevant items scores 0 everywhere; evaluation only samples users with some.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import numpy as np

METRICS = ("ndcg", "precision", "recall", "map", "hit_rate")


def _as_array(items: Collection[int] | np.ndarray) -> np.ndarray:
    if isinstance(items, np.ndarray):
        return items.ravel()
    return np.fromiter(items, dtype=np.int64, count=len(items))


def _hits(
    recommended: Sequence[int] | np.ndarray, relevant: Collection[int] | np.ndarray, k: int
) -> np.ndarray:
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    top = np.asarray(recommended)[:k]
    return np.isin(top, _as_array(relevant))


def precision_at_k(
    recommended: Sequence[int] | np.ndarray, relevant: Collection[int] | np.ndarray, k: int
) -> float:
    """Share of the k slots that hold a relevant item."""
    return float(_hits(recommended, relevant, k).sum() / k)


def recall_at_k(
    recommended: Sequence[int] | np.ndarray, relevant: Collection[int] | np.ndarray, k: int
) -> float:
    """Share of the relevant items found in the first k."""
    n_relevant = len(relevant)
    if n_relevant == 0:
        return 0.0
    return float(_hits(recommended, relevant, k).sum() / n_relevant)


def ndcg_at_k(
    recommended: Sequence[int] | np.ndarray, relevant: Collection[int] | np.ndarray, k: int
) -> float:
    """Position-discounted hits relative to the best possible list."""
    n_relevant = len(relevant)
    if n_relevant == 0:
        return 0.0
    hits = _hits(recommended, relevant, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float(discounts[: hits.size][hits].sum())
    ideal = float(discounts[: min(k, n_relevant)].sum())
    return dcg / ideal


def average_precision_at_k(
    recommended: Sequence[int] | np.ndarray, relevant: Collection[int] | np.ndarray, k: int
) -> float:
    """Mean precision at the hit positions, normalised by min(k, |relevant|)."""
    n_relevant = len(relevant)
    if n_relevant == 0:
        return 0.0
    hits = _hits(recommended, relevant, k)
    if not hits.any():
        return 0.0
    precisions = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float(precisions[hits].sum() / min(k, n_relevant))


def hit_rate_at_k(
    recommended: Sequence[int] | np.ndarray, relevant: Collection[int] | np.ndarray, k: int
) -> float:
    """1.0 when the first k hold any relevant item: the user was served something they liked."""
    return float(_hits(recommended, relevant, k).any())


def catalog_coverage(lists: Iterable[Sequence[int] | np.ndarray], catalog_size: int) -> float:
    """Share of the catalog that appears in at least one list."""
    if catalog_size <= 0:
        raise ValueError(f"catalog_size must be positive, got {catalog_size}")
    arrays = [np.asarray(lst, dtype=np.int64).ravel() for lst in lists]
    if not arrays:
        return 0.0
    return float(np.unique(np.concatenate(arrays)).size / catalog_size)


def ranking_metrics(
    recommended: Sequence[Sequence[int] | np.ndarray],
    relevant: Sequence[Collection[int] | np.ndarray],
    k: int,
) -> dict[str, np.ndarray]:
    """Per-user ndcg, precision, recall, map and hit_rate arrays (aligned with the inputs)."""
    if len(recommended) != len(relevant):
        raise ValueError("recommended and relevant differ in length")
    functions = {
        "ndcg": ndcg_at_k,
        "precision": precision_at_k,
        "recall": recall_at_k,
        "map": average_precision_at_k,
        "hit_rate": hit_rate_at_k,
    }
    return {
        name: np.array(
            [fn(rec, rel, k) for rec, rel in zip(recommended, relevant, strict=True)],
            dtype=np.float64,
        )
        for name, fn in functions.items()
    }
