"""How well the attack defences work, measured on labelled injections.

* :func:`detection_report` — per attack kind: attackers, how many were suspected (recall) and
  precision; false positives are genuine accounts among the suspects. With several kinds in one
  history a false positive belongs to no kind, so each kind's precision counts all of them
  (``tp / (tp + false positives)``): what that kind's precision would be if it had been the only
  attack, assuming the genuine accounts flagged do not depend on which attack ran.
* :func:`target_exposure` — a target movie's exposure in served top-k lists: the share of lists
  that contain it and its mean rank (1 = first) where it appears.
* :func:`model_top_lists` — the top-k lists a trained model's final factors give a set of users,
  unseen movies only (what the published batch view serves them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from flixlake.batch.evaluation import factor_arrays, lists_by_user, recommend_from_factors
from flixlake.batch.topn import ItemIndex
from flixlake.contract.attack_labels import AttackLabels


def detection_report(labels: AttackLabels, suspected: Iterable[int]) -> dict[str, Any]:
    """Precision and recall of a set of suspected accounts against the labels, per kind."""
    suspects = {int(u) for u in suspected}
    attackers = labels.accounts_by_kind()
    every = set().union(*attackers.values()) if attackers else set()
    false_positives = len(suspects - every)
    kinds: dict[str, dict[str, Any]] = {}
    for kind, accounts in sorted(attackers.items()):
        hit = len(accounts & suspects)
        kinds[kind] = {
            "attackers": len(accounts),
            "detected": hit,
            "recall": hit / len(accounts),
            "precision": hit / (hit + false_positives) if hit + false_positives else None,
        }
    true_positives = len(every & suspects)
    return {
        "kinds": kinds,
        "suspected": len(suspects),
        "true_positives": true_positives,
        "false_positives": false_positives,
        "precision": true_positives / len(suspects) if suspects else None,
        "recall": true_positives / len(every) if every else None,
    }


def target_exposure(lists: Sequence[np.ndarray], target: int, k: int = 20) -> dict[str, Any]:
    """Share of the top-``k`` lists containing ``target`` and its mean 1-based rank there."""
    ranks = []
    for recs in lists:
        where = np.flatnonzero(np.asarray(recs[:k]) == target)
        if where.size:
            ranks.append(int(where[0]) + 1)
    n = len(lists)
    return {
        "lists": n,
        "containing": len(ranks),
        "share": len(ranks) / n if n else 0.0,
        "mean_rank": float(np.mean(ranks)) if ranks else None,
    }


def seen_by_user(
    watch_sessions_df: DataFrame, ratings_df: DataFrame, users: np.ndarray
) -> dict[int, np.ndarray]:
    """Movies each of ``users`` watched or rated (what a batch view never recommends again)."""
    spark = watch_sessions_df.sparkSession
    wanted = spark.createDataFrame([(int(u),) for u in users.tolist()], "user_id long")
    pairs = (
        watch_sessions_df.select("user_id", "movie_idx")
        .unionByName(ratings_df.select("user_id", "movie_idx"))
        .join(F.broadcast(wanted), "user_id", "left_semi")
        .distinct()
        .toArrow()
    )
    return lists_by_user(
        np.asarray(pairs.column("user_id").to_numpy(zero_copy_only=False), np.int64),
        np.asarray(pairs.column("movie_idx").to_numpy(zero_copy_only=False), np.int64),
    )


def model_top_lists(
    spark: SparkSession,
    factors: Mapping[str, str],
    users: np.ndarray,
    seen: Mapping[int, np.ndarray],
    k: int,
) -> list[np.ndarray]:
    """Each user's best ``k`` unseen movies under the factors at ``factors["users"/"items"]``."""
    item_ids, item_matrix = factor_arrays(spark.read.parquet(factors["items"]))
    user_ids, user_matrix = factor_arrays(spark.read.parquet(factors["users"]))
    index = ItemIndex.build(item_ids, item_matrix, k)
    return recommend_from_factors(np.asarray(users, np.int64), user_ids, user_matrix, index, seen)
