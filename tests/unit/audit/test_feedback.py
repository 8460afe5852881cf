"""The feedback-loop audit on a constructed case whose answers are computed by hand.

Catalog a..e. Before the first model, users 1-4 watched: a (4 users), b (1), c (1): popularity
a 1.0, b 0.25, c 0.25, d 0, e 0; the short head (20 % of 5 movies) is {a}. Model m0 is current
from T0, m1 from T1. In cycle 0 the control variant shows b, c, d, e once each and the
exploration variant a and e (no model: never "personalised"); in cycle 1 the control shows a
twice, b and c once, of which only user 2's list came from a model that knows the user: exposure
concentrates on the popular movie, which every measure must show. Watched pairs count once, from
their first minute, and only when new (not watched before).
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyspark.sql import SparkSession
from typer.testing import CliRunner

from flixlake.audit.feedback import (
    ALL_USERS,
    Cycle,
    NoCyclesError,
    feedback_audit,
    first_watches,
    retrain_cycles,
    trend,
    with_recommended,
)
from flixlake.batch.catalog import upsert_movies
from flixlake.lake.store import Lake
from flixlake.lake.tables import BRONZE_EVENTS, SERVED_RECOMMENDATIONS
from flixlake.ops.cli import app
from flixlake.testing import record_published_model

T0 = dt.datetime(2026, 11, 20, 3, 0, tzinfo=dt.UTC)
T1 = dt.datetime(2026, 11, 21, 3, 0, tzinfo=dt.UTC)
MIN = dt.timedelta(minutes=1)


# gini, short_head and exposure are flixlake.batch.fairness's, tested in tests/unit/batch.
def test_retrain_cycles_follow_publication_and_skip_never_published_models() -> None:
    rows = [
        {"model_version": "m1", "status": "published", "published_at": T1},
        {"model_version": "r", "status": "rejected", "published_at": None},
        {"model_version": "m0", "status": "rolled_back", "published_at": T0},
    ]
    assert retrain_cycles(rows) == [Cycle(0, "m0", T0, T1), Cycle(1, "m1", T1, None)]


def test_trend_is_the_least_squares_change_per_cycle() -> None:
    assert trend([0.2, 0.4, 0.6]) == pytest.approx(0.2)
    assert trend([0.5, math.nan, 0.3]) == pytest.approx(-0.1)
    assert math.isnan(trend([0.5]))


# -- transformations -----------------------------------------------------------------------------
def test_first_watches_and_recommended_before_the_first_minute(spark: SparkSession) -> None:
    events = spark.createDataFrame(
        [
            ("ok", "watch", T0 + 3 * MIN, 1, "a"),
            ("ok", "watch", T0 + 2 * MIN, 1, "a"),  # the first minute of (1, a)
            ("ok", "watch", T0 + 5 * MIN, 2, "a"),
            ("ok", "rate", T0, 3, "a"),  # a rating is not a watch
            ("rejected", None, None, None, None),
            ("ok", "watch", T0 + 9 * MIN, 3, "b"),
        ],
        "parse_status string, event_type string, event_time timestamp, user_id long, "
        "movie_id string",
    )
    pairs = first_watches(events)
    got = {(r["user_id"], r["movie_id"]): r["first_watched"] for r in pairs.collect()}
    assert set(got) == {(1, "a"), (2, "a"), (3, "b")}
    assert got[(1, "a")].replace(tzinfo=dt.UTC) == T0 + 2 * MIN
    slots = spark.createDataFrame(
        [
            (1, "a", T0 + 2 * MIN + dt.timedelta(milliseconds=400)),  # same second: before
            (2, "a", T0 + 6 * MIN),  # after the first minute: not what made them watch
            (3, "c", T0),  # another movie
        ],
        "user_id long, movie_id string, served_at timestamp",
    )
    flagged = {
        (r["user_id"], r["movie_id"]): r["recommended"]
        for r in with_recommended(pairs, slots).collect()
    }
    assert flagged == {(1, "a"): 1, (2, "a"): 0, (3, "b"): 0}


# -- the whole audit on a constructed lake -------------------------------------------------------
def bronze_row(offset: int, user: int, movie: str, at: dt.datetime, kind: str = "watch") -> dict:
    return {
        "source": "movielog",
        "source_partition": 0,
        "source_offset": offset,
        "raw": f"{at:%Y-%m-%dT%H:%M:%S},{user},{kind} {movie}",
        "parse_status": "ok",
        "reject_reason": None,
        "event_type": kind,
        "event_time": at,
        "user_id": user,
        "movie_id": movie,
        "minute": 0 if kind == "watch" else None,
        "rating": 4 if kind == "rate" else None,
        "reco_server": None,
        "reco_status": None,
        "reco_results": None,
        "reco_response_ms": None,
        "ingest_batch": "b",
        "ingested_at": at,
        "event_date": at.date(),
    }


def served_row(
    offset: int, request: str, user: int, variant: str, items: list[str], at: dt.datetime, **kw: Any
) -> dict:
    return {
        "source": "served_recommendations",
        "source_partition": 0,
        "source_offset": offset,
        "request_id": request,
        "served_at": at,
        "user_id": user,
        "experiment": kw.get("experiment", "loop"),
        "variant": variant,
        "model_version": "explore" if variant == "explore" else kw.get("model", "m"),
        "items": items,
        "status": kw.get("status", 200),
        "latency_ms": 0.3,
        "server": "s",
        "ingest_batch": "b",
        "ingested_at": at,
        "served_date": at.date(),
    }


@pytest.fixture
def loop_lake(lake: Lake) -> Lake:
    upsert_movies(lake, ["a", "b", "c", "d", "e"])
    history = T0 - dt.timedelta(hours=5)
    watches = [(1, "a"), (2, "a"), (2, "b"), (3, "a"), (3, "c"), (4, "a")]
    bronze = [bronze_row(i, u, m, history + i * MIN) for i, (u, m) in enumerate(watches)]
    bronze += [
        bronze_row(10, 4, "e", history, kind="rate"),  # not a watch
        # cycle 0
        bronze_row(11, 1, "b", T0 + 10 * MIN),  # shown at T0 + 5 min: recommended
        bronze_row(12, 1, "b", T0 + 11 * MIN),  # its next minute: the same pair
        bronze_row(13, 2, "a", T0 + 20 * MIN),  # watched before the loop: not new
        bronze_row(14, 2, "d", T0 + 60 * MIN),  # recommended
        bronze_row(15, 5, "e", T0 + 30 * MIN),  # explorer, recommended
        bronze_row(16, 6, "c", T0 + 40 * MIN),  # never served: everyone only, not recommended
        # cycle 1
        bronze_row(17, 8, "a", T1 + 6 * MIN),  # a new user, recommended at T1 + 5 min
        bronze_row(18, 2, "c", T1 + 7 * MIN),  # recommended
        bronze_row(19, 1, "b", T1 + 8 * MIN),  # a re-watch: not new
    ]
    lake.append("bronze_events", pa.Table.from_pylist(bronze, schema=BRONZE_EVENTS.schema))
    served = [
        served_row(0, "r1", 1, "control", ["b", "c"], T0 + 5 * MIN, model="m0"),
        served_row(1, "r1", 1, "control", ["b", "c"], T0 + 5 * MIN, model="m0"),  # landed twice
        served_row(2, "r2", 2, "control", ["d", "e"], T0 + 5 * MIN, model="m0"),
        served_row(3, "r3", 5, "explore", ["a", "e"], T0 + 6 * MIN),
        served_row(4, "r4", 7, "control", ["a", "a", "a"], T0, experiment="other"),
        served_row(5, "r5", 7, "control", [], T0, status=503),
        served_row(6, "r6", 8, "control", ["a", "b"], T1 + 5 * MIN, model="m1"),  # m1 lacks 8
        served_row(7, "r7", 2, "control", ["a", "c"], T1 + 5 * MIN, model="m1"),
    ]
    views = [("m0", 1, ["b", "c"]), ("m0", 2, ["d", "e"]), ("m1", 2, ["a", "c"])]
    lake.append(
        "batch_recommendations",
        pa.Table.from_pylist(
            [
                {"user_id": u, "rank": r + 1, "movie_id": m, "score": 1.0, "model_version": v}
                for v, u, movies in views
                for r, m in enumerate(movies)
            ]
        ),
    )
    lake.append(
        "served_recommendations",
        pa.Table.from_pylist(served, schema=SERVED_RECOMMENDATIONS.schema),
    )
    record_published_model(lake, "m0", T0.date(), T0)
    record_published_model(lake, "m1", T1.date(), T1)
    return lake


def test_the_audit_measures_every_cycle_by_hand(spark: SparkSession, loop_lake: Lake) -> None:
    audit = feedback_audit(spark, loop_lake, "loop")
    assert [(c.index, c.model_version) for c in audit.cycles] == [(0, "m0"), (1, "m1")]
    assert audit.reference_users == 4 and audit.head_size == 1
    assert audit.popularity.tolist() == [1.0, 0.25, 0.25, 0.0, 0.0]
    got = {
        (r.cycle, r.group, r.kind): (
            r.n,
            r.users,
            round(r.coverage, 4),
            round(r.gini, 4),
            round(r.long_tail_share, 4),
            round(r.avg_popularity, 4),
            None if r.recommended_share is None else round(r.recommended_share, 4),
        )
        for r in audit.rows
    }
    assert got == {
        # served: slots, users, coverage, Gini, long-tail share, average popularity
        (0, "control", "served"): (4, 2, 0.8, 0.2, 1.0, 0.125, None),
        (0, "explore", "served"): (2, 1, 0.4, 0.6, 0.5, 0.5, None),
        (0, ALL_USERS, "served"): (6, 3, 1.0, 0.1333, 0.8333, 0.25, None),
        (1, "control", "served"): (4, 2, 0.6, 0.5, 0.5, 0.625, None),
        (1, ALL_USERS, "served"): (4, 2, 0.6, 0.5, 0.5, 0.625, None),
        # personalised: answers of a model to a user in its batch view (user 8 is not in m1's)
        (0, "control", "personalised"): (4, 2, 0.8, 0.2, 1.0, 0.125, None),
        (0, ALL_USERS, "personalised"): (4, 2, 0.8, 0.2, 1.0, 0.125, None),
        (1, "control", "personalised"): (2, 1, 0.4, 0.6, 0.5, 0.625, None),
        (1, ALL_USERS, "personalised"): (2, 1, 0.4, 0.6, 0.5, 0.625, None),
        # watched: new pairs, users, ..., share recommended before the first minute
        (0, "control", "watched"): (2, 2, 0.4, 0.6, 1.0, 0.125, 1.0),
        (0, "explore", "watched"): (1, 1, 0.2, 0.8, 1.0, 0.0, 1.0),
        (0, ALL_USERS, "watched"): (4, 4, 0.8, 0.2, 1.0, 0.125, 0.75),
        (1, "control", "watched"): (2, 2, 0.4, 0.6, 0.5, 0.625, 1.0),
        (1, ALL_USERS, "watched"): (2, 2, 0.4, 0.6, 0.5, 0.625, 1.0),
    }
    # the loop tightened in the control: every measure moves the way its definition says
    control = {m: audit.series("control", "served", m) for m in ("gini", "avg_popularity")}
    assert trend(control["gini"]) > 0 and trend(control["avg_popularity"]) > 0
    assert trend(audit.series("control", "served", "coverage")) < 0
    assert trend(audit.series("control", "served", "long_tail_share")) < 0
    assert math.isnan(audit.series("explore", "served", "gini")[1])  # nobody explored in cycle 1


def test_no_published_model_is_a_clear_error(spark: SparkSession, lake: Lake) -> None:
    with pytest.raises(NoCyclesError, match="no published model"):
        feedback_audit(spark, lake, "loop")


def test_the_cli_says_when_there_is_no_cycle_yet(tmp_path: Path) -> None:
    """Before any model is published: exit 2 and why, without starting Spark."""
    result = CliRunner().invoke(
        app, ["experiment", "feedback", "--env", "test", "--home", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "no published model" in result.output
