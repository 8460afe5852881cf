"""The detect step on a tiny hand-made lake: who is suspected, reruns replace, the gate refuses."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa
import pytest
from pyspark.sql import SparkSession

from flixlake.batch.detect import run_detect
from flixlake.batch.errors import GateFailedError
from flixlake.config import Settings, load_settings
from flixlake.lake import runs
from flixlake.lake.store import Lake
from flixlake.lake.tables import MOVIES, RATINGS, RECO_REQUESTS, WATCH_SESSIONS

D = dt.date(2026, 11, 22)
EVENING = dt.datetime(2026, 11, 21, 20, tzinfo=dt.UTC)
OVERRIDES: dict[str, Any] = {
    "attacks": {
        "detection": {"burst_min_accounts": 3, "flood_requests_per_hour": 50},
        "mitigation": {"max_excluded_fraction": 0.5},
    }
}


def _at(minutes: float, base: dt.datetime = EVENING) -> dt.datetime:
    return base + dt.timedelta(minutes=minutes)


def _watch(user: int, movie: int, when: dt.datetime) -> dict[str, Any]:
    return {
        "user_id": user,
        "movie_id": f"m{movie}",
        "movie_idx": movie,
        "minutes_watched": 30,
        "max_minute": 29,
        "first_time": when,
        "last_time": when + dt.timedelta(minutes=29),
        "event_date": when.date(),
    }


def _rating(user: int, movie: int, stars: int, when: dt.datetime) -> dict[str, Any]:
    return {
        "user_id": user,
        "movie_id": f"m{movie}",
        "movie_idx": movie,
        "rating": stars,
        "rated_at": when,
    }


def build_lake(lake: Lake, settings: Settings) -> None:
    """Old users 1-6 (a month of history); new accounts 50-53 rate movie 9 five stars within
    half an hour; new account 60 rates movie 9 three stars; account 70 asks 60 times an hour."""
    month_ago = EVENING - dt.timedelta(days=30)
    watches = [_watch(u, m, _at(60 * u, month_ago)) for u in range(1, 7) for m in (1, 2, 3)]
    watches += [_watch(u, m, _at(60 * u)) for u in range(1, 7) for m in (4, 5)]
    ratings = [_rating(u, 1 + u % 3, 2 + u % 3, _at(60 * u + 40, month_ago)) for u in range(1, 7)]
    ratings += [_rating(u, 9, 3, _at(10 * u)) for u in (1, 2)]  # old raters of movie 9
    for i, user in enumerate((50, 51, 52, 53)):
        watches.append(_watch(user, 9, _at(5 * i)))
        ratings.append(_rating(user, 9, 5, _at(5 * i + 31)))
    watches.append(_watch(60, 9, _at(3)))
    ratings.append(_rating(60, 9, 3, _at(34)))
    requests = [
        {
            "event_time": _at(0.5 * i),
            "user_id": 70,
            "server": "s",
            "status": 200,
            "results": ["m1"],
            "n_results": 1,
            "response_ms": 5.0,
            "event_date": EVENING.date(),
        }
        for i in range(60)
    ]
    lake.append("watch_sessions", pa.Table.from_pylist(watches, schema=WATCH_SESSIONS.schema))
    lake.append("ratings", pa.Table.from_pylist(ratings, schema=RATINGS.schema))
    lake.append("reco_requests", pa.Table.from_pylist(requests, schema=RECO_REQUESTS.schema))
    lake.append(
        "movies",
        pa.Table.from_pylist(
            [{"movie_idx": m, "movie_id": f"m{m}"} for m in range(1, 10)], schema=MOVIES.schema
        ),
    )
    versions = lake.versions(["watch_sessions", "ratings", "reco_requests", "movies"])
    runs.write_manifest(settings, D, "compact", {"bronze_version": 1, "output_versions": versions})


@pytest.fixture(scope="module")
def detected(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Settings, Lake, dict[str, Any]]:
    settings = load_settings("test", home=tmp_path_factory.mktemp("detect"), overrides=OVERRIDES)
    lake = Lake(settings.lake_root)
    build_lake(lake, settings)
    return settings, lake, run_detect(spark, lake, settings, D)


def test_the_burst_and_the_flood_are_suspected_and_nobody_else(
    detected: tuple[Settings, Lake, dict[str, Any]],
) -> None:
    _, lake, summary = detected
    rows = {r["user_id"]: r for r in lake.read("suspected_accounts").to_pylist()}
    assert {u: r["kind"] for u, r in rows.items()} == {
        50: "rating_burst",
        51: "rating_burst",
        52: "rating_burst",
        53: "rating_burst",
        70: "request_flood",
    }
    assert "rated m9 5 stars with 3 other new accounts within 1h" in rows[50]["reason"]
    assert rows[70]["reason"].startswith("60 recommendation requests in one hour (limit 50)")
    assert all(r["excluded"] and r["run_date"] == D for r in rows.values())
    assert summary["passed"] is True
    assert summary["scored_accounts"] == 12  # users 1-6, 50-53, 60, 70 were active this week
    assert summary["by_kind"] == {"rating_burst": 4, "request_flood": 1}
    assert {(b["movie_id"], b["stars"], b["new_accounts"]) for b in summary["bursts"]} == {
        ("m9", 5, 4)
    }
    assert runs.read_manifest(detected[0], D, "detect")["table_version"] == summary["table_version"]


def test_a_rerun_with_nothing_changed_writes_nothing(
    spark: SparkSession, detected: tuple[Settings, Lake, dict[str, Any]]
) -> None:
    settings, lake, summary = detected
    version = lake.version("suspected_accounts")
    assert run_detect(spark, lake, settings, D) == summary
    assert lake.version("suspected_accounts") == version


def test_a_rerun_replaces_the_rows_and_too_many_suspects_fail_the_step(
    spark: SparkSession, detected: tuple[Settings, Lake, dict[str, Any]]
) -> None:
    settings, lake, _ = detected
    strict = load_settings(
        "test",
        home=settings.home,
        overrides={
            "attacks": {**OVERRIDES["attacks"], "mitigation": {"max_excluded_fraction": 0.1}}
        },
    )
    with pytest.raises(GateFailedError, match=r"5 of 12 scored accounts suspected \(41.7%\)"):
        run_detect(spark, lake, strict, D)
    assert runs.read_manifest(strict, D, "detect")["passed"] is False
    assert lake.read("suspected_accounts").num_rows == 5  # the run date's rows replaced, not added
