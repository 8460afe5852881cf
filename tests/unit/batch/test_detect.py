"""The detector's rules and scores on hand-made profiles, and the step's table and gate."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pytest

from flixlake.audit.measure import detection_report, target_exposure
from flixlake.batch.detect import (
    BURST,
    FLOOD,
    OUTLIER,
    REPORTED_FEATURES,
    anomaly_scores,
    burst_summary,
    classify,
    run_window,
    suspects_table,
)
from flixlake.config import DetectionConfig
from flixlake.contract.attack_labels import AttackLabel, AttackLabels
from flixlake.lake.tables import SUSPECTED_ACCOUNTS

T = dt.datetime(2026, 11, 21, 18, tzinfo=dt.UTC)
CONFIG = DetectionConfig(min_ratings=5, outlier_score=0.6, flood_requests_per_hour=100)


def profiles(rows: list[dict[str, float]]) -> pa.Table:
    """Profiles with every reported feature (0 unless given) and burst details."""
    base = dict.fromkeys(REPORTED_FEATURES, 0.0)
    return pa.Table.from_pylist(
        [
            {
                "user_id": i + 1,
                "first_seen": T,
                "last_seen": T,
                "burst_movie_idx": 7 if row.get("burst_ratings") else None,
                "burst_rating": 5 if row.get("burst_ratings") else None,
                "burst_window": "1h" if row.get("burst_ratings") else None,
                "burst_new_accounts": 12 if row.get("burst_ratings") else None,
                **base,
                **row,
            }
            for i, row in enumerate(rows)
        ]
    )


def test_each_rule_fires_on_its_own_signal_only() -> None:
    table = profiles(
        [
            {"max_requests_per_hour": 100},  # 1: at the flood limit
            {"max_requests_per_hour": 99},  # 2: under it
            {"burst_ratings": 1},  # 3: rated inside a burst
            {"n_ratings": 5},  # 4: odd (score below) with enough ratings
            {"n_ratings": 4},  # 5: odd but too few ratings
            {"n_ratings": 50},  # 6: many ratings, unremarkable score
        ]
    )
    scores = np.array([0.5, 0.5, 0.5, 0.7, 0.9, 0.55])
    got = {s.user_id: s for s in classify(table, scores, CONFIG, {7: "the+x+2001"})}
    assert {u: s.kind for u, s in got.items()} == {1: FLOOD, 3: BURST, 4: OUTLIER}
    assert got[1].reason == "100 recommendation requests in one hour (limit 100)"
    assert got[3].reason.startswith(
        "as a new account rated the+x+2001 5 stars with 11 other new accounts within 1h"
    )
    assert got[4].reason.startswith("odd profile, anomaly score 0.700 >= 0.6")
    assert got[4].score == pytest.approx(0.7)


def test_a_suspect_keeps_every_reason_and_the_strongest_kind() -> None:
    table = profiles([{"max_requests_per_hour": 500, "burst_ratings": 2, "n_ratings": 9}])
    (suspect,) = classify(table, np.array([0.8]), CONFIG, {})
    assert suspect.kind == FLOOD
    assert suspect.reason.count("; ") == 2  # flood; burst; profile
    assert "movie #7" in suspect.reason  # an unknown movie index is still named
    assert suspect.features["n_ratings"] == 9.0


def test_the_isolation_forest_scores_the_odd_one_highest() -> None:
    rng = np.random.default_rng(0)
    crowd = rng.normal(0.0, 1.0, size=(300, 3))
    odd = np.array([[8.0, -8.0, 8.0]])
    scores = anomaly_scores(np.vstack([crowd, odd]), trees=100, seed=1)
    assert int(np.argmax(scores)) == 300
    assert scores[300] > 0.7 > float(np.median(scores))
    assert list(anomaly_scores(odd, trees=10, seed=1)) == [0.0]  # one account: nothing to compare


def test_suspects_table_matches_the_registry_schema() -> None:
    (suspect,) = classify(profiles([{"burst_ratings": 1}]), np.array([0.5]), CONFIG, {})
    table = suspects_table([suspect], dt.date(2026, 11, 22), True, T)
    assert table.schema == SUSPECTED_ACCOUNTS.schema
    row = table.to_pylist()[0]
    assert (row["user_id"], row["kind"], row["excluded"]) == (1, BURST, True)
    assert json.loads(row["features"])["burst_ratings"] == 1.0


def test_the_run_window_is_whole_days_up_to_the_run_date() -> None:
    since, end = run_window(dt.date(2026, 11, 22), 7)
    assert since == dt.datetime(2026, 11, 16, tzinfo=dt.UTC)
    assert end == dt.datetime(2026, 11, 23, tzinfo=dt.UTC)


def test_burst_summary_keeps_each_movies_largest_burst() -> None:
    bursts = pa.Table.from_pylist(
        [
            {"movie_idx": 7, "rating": 5, "window": "1h", "new_accounts": 12, "raters": 12,
             "window_start": T},
            {"movie_idx": 7, "rating": 5, "window": "1h", "new_accounts": 15, "raters": 16,
             "window_start": T + dt.timedelta(minutes=15)},
            {"movie_idx": 3, "rating": 1, "window": "24h", "new_accounts": 30, "raters": 40,
             "window_start": T},
        ]
    )  # fmt: skip
    got = burst_summary(bursts, {7: "seven", 3: "three"})
    assert [(b["movie_id"], b["new_accounts"]) for b in got] == [("three", 30), ("seven", 15)]


def test_detection_report_counts_per_kind_by_hand() -> None:
    labels = AttackLabels(
        attacks=(
            AttackLabel(attack_id="push-1", kind="push", accounts=(101, 102, 103, 104),
                        start=T, end=T, target_movie="m", target_rating=5),
            AttackLabel(attack_id="flood-1", kind="flood", accounts=(201, 202), start=T, end=T),
        )
    )  # fmt: skip
    report = detection_report(labels, [101, 102, 103, 201, 7])  # 7 is genuine
    assert report["kinds"]["push"] == {
        "attackers": 4,
        "detected": 3,
        "recall": 0.75,
        "precision": 0.75,  # 3 / (3 + 1 false positive)
    }
    assert report["kinds"]["flood"]["recall"] == 0.5
    assert (report["true_positives"], report["false_positives"]) == (4, 1)
    assert report["precision"] == 0.8 and report["recall"] == 4 / 6
    assert detection_report(AttackLabels(), [])["precision"] is None


def test_target_exposure_share_and_mean_rank() -> None:
    lists = [np.array([5, 9, 2]), np.array([9, 5]), np.array([1, 2, 3]), np.array([], np.int64)]
    assert target_exposure(lists, 9, k=3) == {
        "lists": 4,
        "containing": 2,
        "share": 0.5,
        "mean_rank": 1.5,
    }
    assert target_exposure(lists, 3, k=2)["containing"] == 0  # beyond the top k
