"""Online evaluation: per-user conversions on a hand-made example, idempotent hours, the CLI report."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import write_deltalake
from pyspark.sql import SparkSession
from typer.testing import CliRunner

from flixlake.config import Settings
from flixlake.experiments.online import evaluation_hours, run_online_evaluation
from flixlake.lake.store import Lake, MissingTableError
from flixlake.lake.tables import BRONZE_EVENTS, ONLINE_EVALUATIONS, SERVED_RECOMMENDATIONS
from flixlake.ops.cli import app

UTC = dt.UTC
UNTIL = dt.datetime(2026, 11, 22, 12, 0, tzinfo=UTC)  # window 1h: hours up to 10:00 are complete
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def t(day: int, hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, minute, second, tzinfo=UTC)


def _answer(
    request_id: str,
    served_at: dt.datetime,
    user: int,
    variant: str,
    model: str,
    items: list[str],
    status: int = 200,
) -> dict[str, Any]:
    return {
        "source": "served_recommendations",
        "source_partition": 0,
        "source_offset": 0,
        "request_id": request_id,
        "served_at": served_at,
        "user_id": user,
        "experiment": "default",
        "variant": variant,
        "model_version": model,
        "items": items,
        "status": status,
        "latency_ms": 12.5,
        "server": "test:8082",
        "ingest_batch": "b0",
        "ingested_at": served_at,
        "served_date": served_at.date(),
    }


def _event(
    user: int, movie: str, at: dt.datetime, event_type: str = "watch", status: str = "ok"
) -> dict[str, Any]:
    return {
        "source": "movielog",
        "source_partition": 0,
        "source_offset": 0,
        "raw": f"{at:%Y-%m-%dT%H:%M:%S},{user},GET /data/m/{movie}/1.mpg",
        "parse_status": status,
        "reject_reason": None if status == "ok" else "test",
        "event_type": event_type,
        "event_time": at,
        "user_id": user,
        "movie_id": movie,
        "minute": 1 if event_type == "watch" else None,
        "rating": 4 if event_type == "rate" else None,
        "reco_server": None,
        "reco_status": None,
        "reco_results": None,
        "reco_response_ms": None,
        "ingest_batch": "b0",
        "ingested_at": at,
        "event_date": at.date(),
    }


ANSWERS = [
    _answer("r1", t(22, 9, 10), 1, "control", "m1", ["a", "b"]),  # b watched 30 min later
    _answer("r1", t(22, 9, 10), 1, "control", "m1", ["a", "b"]),  # a producer retry: once
    _answer("r2", t(22, 9, 20), 2, "control", "m1", ["a"]),  # a watched 1h + 1s later: too late
    _answer("r3", t(22, 9, 30), 3, "treatment", "m2", ["c"]),  # c watched before served_at
    _answer("r4", t(22, 9, 45), 4, "treatment", "m2", ["c", "d"]),  # watches of other movies/users
    _answer("r5", t(22, 9, 50), 5, "treatment", "m2", ["d"]),  # d watched exactly 1h later
    _answer("r6", t(22, 9, 55), 5, "treatment", "m2", ["d"], status=503),  # not an answer
    _answer("r7", t(22, 9, 56), 5, "treatment", "m2", []),  # nothing recommended
    _answer("r8", t(22, 10, 5), 1, "control", "m1", ["a"]),  # the last complete hour
    _answer("r9", t(22, 11, 5), 7, "control", "m1", ["x"]),  # incomplete hour at UNTIL
    _answer("r10", t(21, 10, 30), 8, "control", "m1", ["z"]),  # before the 24 h lookback
    _answer("r11", t(21, 23, 30), 9, "control", "m0", ["z"]),  # watched after midnight
    # served at 09:35:00.400, f watched at 09:35:00 (log times are whole seconds): the same second
    _answer("r12", t(22, 9, 35) + dt.timedelta(milliseconds=400), 6, "treatment", "m2", ["f"]),
    _answer("r13", t(22, 9, 58), 1, "control", "m1", ["q"]),  # user 1's second answer of 9:00
]
EVENTS = [
    _event(1, "b", t(22, 9, 40)),
    _event(1, "b", t(22, 9, 41)),  # the next minute of the same movie: still one conversion
    _event(2, "a", t(22, 10, 20, 1)),
    _event(2, "a", t(22, 9, 30), event_type="rate"),  # a rating is not a watch
    _event(2, "a", t(22, 9, 31), status="rejected"),  # neither is a rejected line
    _event(3, "c", t(22, 9, 25)),
    _event(3, "c", t(22, 9, 29, 59)),
    _event(6, "f", t(22, 9, 35)),
    _event(4, "e", t(22, 9, 50)),  # not recommended to user 4
    _event(5, "c", t(22, 9, 50)),  # recommended to user 4, watched by user 5
    _event(5, "d", t(22, 10, 50)),
    _event(1, "a", t(22, 10, 30)),
    _event(7, "x", t(22, 11, 10)),
    _event(8, "z", t(21, 10, 40)),
    _event(9, "z", t(22, 0, 10)),
    _event(1, "q", t(22, 10, 10)),
]
# (served_hour, variant, model_version, user) -> (served, converted), worked out by hand from the
# above
EXPECTED = {
    (t(21, 23), "control", "m0", 9): (1, 1),
    (t(22, 9), "control", "m1", 1): (2, 2),  # r1 and r13: one row per user and hour
    (t(22, 9), "control", "m1", 2): (1, 0),
    (t(22, 9), "treatment", "m2", 3): (1, 0),
    (t(22, 9), "treatment", "m2", 4): (1, 0),
    (t(22, 9), "treatment", "m2", 5): (1, 1),
    (t(22, 9), "treatment", "m2", 6): (1, 1),
    (t(22, 10), "control", "m1", 1): (1, 1),
}


def _seed(lake: Lake) -> None:
    lake.append(
        "served_recommendations",
        pa.Table.from_pylist(ANSWERS, schema=SERVED_RECOMMENDATIONS.schema),
    )
    lake.append("bronze_events", pa.Table.from_pylist(EVENTS, schema=BRONZE_EVENTS.schema))


Key = tuple[dt.datetime, str, str, int]


def _evaluations(lake: Lake) -> dict[Key, tuple[int, int]]:
    rows = lake.read("online_evaluations").to_pylist()
    keys = [(r["served_hour"], r["variant"], r["model_version"], r["user_id"]) for r in rows]
    assert len(keys) == len(set(keys)), f"duplicate rows: {keys}"
    for r in rows:
        assert r["experiment"] == "default"
        assert r["window_seconds"] == 3600
        assert r["served_date"] == r["served_hour"].date()
    return {
        (r["served_hour"], r["variant"], r["model_version"], r["user_id"]): (
            r["served"],
            r["converted"],
        )
        for r in rows
    }


def test_evaluation_hours_are_the_complete_hours_of_the_lookback() -> None:
    assert evaluation_hours(UNTIL, 3600, 3) == [t(22, 8), t(22, 9), t(22, 10)]
    assert evaluation_hours(t(22, 11, 59, 59), 3600, 1) == [t(22, 9)]  # 10:00 done at 12:00
    assert evaluation_hours(UNTIL, 5400, 1) == [t(22, 9)]  # 9:00 + 1h + 90 min <= 12:00
    assert evaluation_hours(dt.datetime(2026, 11, 22, 12, 0), 3600, 1) == [t(22, 10)]  # naive: UTC
    cet = dt.timezone(dt.timedelta(hours=1))
    assert evaluation_hours(dt.datetime(2026, 11, 22, 13, 0, tzinfo=cet), 3600, 1) == [t(22, 10)]
    assert len(evaluation_hours(UNTIL, 3600, 24)) == 24
    assert evaluation_hours(UNTIL, 3600, 24)[0] == t(21, 11)


def test_conversions_per_hour_and_variant(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    _seed(lake)
    summary = run_online_evaluation(spark, lake, settings, UNTIL)
    assert _evaluations(lake) == EXPECTED
    assert summary["hours"] == 24
    assert summary["first_hour"] == t(21, 11).isoformat()
    assert summary["last_hour"] == t(22, 10).isoformat()
    assert (summary["rows"], summary["served"], summary["converted"]) == (8, 9, 6)
    assert summary["users"] == 7


def test_rerun_replaces_the_evaluated_hours_only(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    _seed(lake)

    def row(hour: dt.datetime, served: int) -> dict[str, Any]:
        return {
            "served_hour": hour,
            "experiment": "default",
            "model_version": "m1",
            "variant": "control",
            "user_id": 1,
            "served": served,
            "converted": 0,
            "window_seconds": 3600,
            "computed_at": UNTIL,
            "served_date": hour.date(),
        }

    # an hour before the lookback (kept as it is) and a stale row inside it (replaced: no answers)
    lake.append(
        "online_evaluations",
        pa.Table.from_pylist([row(t(20, 5), 40), row(t(22, 8), 99)], ONLINE_EVALUATIONS.schema),
    )
    run_online_evaluation(spark, lake, settings, UNTIL)
    first = _evaluations(lake)
    run_online_evaluation(spark, lake, settings, UNTIL)
    assert _evaluations(lake) == first == {**EXPECTED, (t(20, 5), "control", "m1", 1): (40, 0)}


def test_an_hour_is_evaluated_once_its_watch_window_has_passed(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    _seed(lake)
    run_online_evaluation(spark, lake, settings, t(22, 12, 59))
    assert (t(22, 11), "control", "m1", 7) not in _evaluations(lake)
    run_online_evaluation(spark, lake, settings, t(22, 13))
    got = _evaluations(lake)
    assert got[(t(22, 11), "control", "m1", 7)] == (1, 1)
    assert got[(t(22, 10), "control", "m1", 1)] == (1, 1)  # recomputed, not duplicated


def test_missing_served_table_is_a_clear_skip(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    summary = run_online_evaluation(spark, lake, settings, UNTIL)
    assert "served_recommendations" in summary["skipped"]
    assert (summary["rows"], summary["served"], summary["converted"]) == (0, 0, 0)
    assert not lake.exists("online_evaluations")


def test_missing_bronze_table_names_it(spark: SparkSession, lake: Lake, settings: Settings) -> None:
    lake.append(
        "served_recommendations",
        pa.Table.from_pylist(ANSWERS[:1], schema=SERVED_RECOMMENDATIONS.schema),
    )
    with pytest.raises(MissingTableError, match="bronze_events"):
        run_online_evaluation(spark, lake, settings, UNTIL)


def test_a_table_of_the_old_hourly_schema_is_named_with_the_fix(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    _seed(lake)
    old = pa.schema([f for f in ONLINE_EVALUATIONS.schema if f.name != "user_id"])
    write_deltalake(lake.path("online_evaluations"), pa.Table.from_pylist([], old))
    with pytest.raises(MissingTableError, match=r"old hourly schema.*delete"):
        run_online_evaluation(spark, lake, settings, UNTIL)
    result = _report(settings.home)
    assert result.exit_code == 2
    assert "old hourly schema" in result.output


# -- flixlake experiment report ------------------------------------------------------------------
TAU = 0.03  # online.mixture_sd in conf/base.yaml


def _report(home: Path, *args: str) -> Any:
    return CliRunner().invoke(
        app,
        ["experiment", "report", "--env", "test", "--home", str(home), *args],
        env={"COLUMNS": "260"},
    )


def _user_rows(
    variant: str, first_user: int, users: int, converting: int, hours: dict[int, str]
) -> list[dict[str, Any]]:
    """Each user is served 2 answers at 9:00 and 1 at 10:00 (when listed in ``hours``, hour ->
    model version); the first ``converting`` users convert all of theirs, the others none."""
    rows = []
    for hour, model in hours.items():
        served = 2 if hour == 9 else 1
        for u in range(first_user, first_user + users):
            rows.append(
                {
                    "served_hour": t(22, hour),
                    "experiment": "default",
                    "model_version": model,
                    "variant": variant,
                    "user_id": u,
                    "served": served,
                    "converted": served if u < first_user + converting else 0,
                    "window_seconds": 3600,
                    "computed_at": UNTIL,
                    "served_date": t(22, hour).date(),
                }
            )
    return rows


ROWS = [
    *_user_rows("control", 1, 1000, 300, {9: "m1", 10: "m1"}),
    *_user_rows("treatment", 2001, 1000, 400, {9: "m2", 10: "m3"}),
    *_user_rows("same", 4001, 1000, 300, {9: "m4", 10: "m4"}),
    *_user_rows("canary", 7001, 50, 10, {10: "m3"}),
]


def _by_hand(users: list[tuple[int, int]]) -> tuple[float, float]:
    """Ratio and delta-method variance over users ``(served, converted)``, the textbook way."""
    n = len(users)
    rate = sum(y for _, y in users) / sum(s for s, _ in users)
    residuals = sum((y - rate * s) ** 2 for s, y in users)
    return rate, n / (n - 1) * residuals / sum(s for s, _ in users) ** 2


def _msprt_p(diff: float, variance: float) -> float:
    t2 = TAU * TAU
    lam = math.sqrt(variance / (variance + t2)) * math.exp(
        t2 * diff * diff / (2 * variance * (variance + t2))
    )
    return min(1.0, 1 / lam)


def test_report_shows_the_per_user_analysis_and_the_sequential_verdict(
    lake: Lake, settings: Settings
) -> None:
    lake.append("online_evaluations", pa.Table.from_pylist(ROWS, ONLINE_EVALUATIONS.schema))
    # control: 300 users (3, 3) and 700 users (3, 0); treatment 400 and 600. Both looks (9:00 and
    # 10:00) give the same rates and variances, so the always-valid p is that of either look.
    rate_c, var_c = _by_hand([(3, 3)] * 300 + [(3, 0)] * 700)
    rate_t, var_t = _by_hand([(3, 3)] * 400 + [(3, 0)] * 600)
    assert (rate_c, rate_t) == (pytest.approx(0.3), pytest.approx(0.4))
    p_treatment = _msprt_p(rate_t - rate_c, var_t + var_c)
    assert p_treatment < 0.05  # 1.1e-03
    z = (rate_t - rate_c) / math.sqrt(var_t + var_c)
    deff = var_c / (0.3 * 0.7 / 3000)  # every user converts all or nothing: 3x the binomial

    result = _report(settings.home)
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert lines["control"].split()[1:6] == ["m1", "1,000", "3,000", "900", "0.3000"]
    assert f"{deff:.2f}" in lines["control"].split()
    assert f"{p_treatment:.4f}" in lines["treatment"].split()
    assert f"{z:.3f}" in lines["treatment"].split()
    assert "higher: significant at 95%" in lines["treatment"]
    assert "not significant yet" in lines["same"]
    assert lines["same"].split()[-4] == "1.0000"  # identical rates: p = 1
    assert "too few users" in lines["canary"]
    assert "always-valid sequential test" in result.output
    page = settings.artifacts_root / "experiments" / "default" / "report.html"
    assert f"report: {page}" in result.output
    html = page.read_text()
    assert "<img src='watch_through.png'" in html
    assert f"{p_treatment:.4f}" in html and "mSPRT" in html
    assert (page.parent / "watch_through.png").read_bytes().startswith(PNG_MAGIC)

    # a range with only the 10:00 hour, and the treatment as control
    out = settings.home / "elsewhere"
    result = _report(
        settings.home,
        "--since",
        "2026-11-22T10:00",
        "--until",
        "2026-11-22T11:00:00+00:00",
        "--control",
        "treatment",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    cells = {
        line.split()[0]: line.split()[1:5]
        for line in result.output.splitlines()
        if line.split()[:1] in (["control"], ["treatment"], ["canary"], ["same"])
    }
    assert cells == {  # the 10:00 rows only: model version, users, answers, converted
        "treatment": ["m3", "1,000", "1,000", "400"],
        "canary": ["m3", "50", "50", "10"],
        "control": ["m1", "1,000", "1,000", "300"],
        "same": ["m4", "1,000", "1,000", "300"],
    }
    assert "lower: significant at 95%" in result.output  # control vs treatment
    assert (out / "report.html").is_file()


def test_report_without_evaluations_says_what_to_run(lake: Lake, settings: Settings) -> None:
    result = _report(settings.home)
    assert result.exit_code == 2
    assert "run the online evaluation first" in result.output
    assert "jobs/online_evaluation.py" in result.output

    lake.append("online_evaluations", pa.Table.from_pylist(ROWS, ONLINE_EVALUATIONS.schema))
    result = _report(settings.home, "--experiment", "other")
    assert result.exit_code == 2
    assert "'other'" in result.output and "['default']" in result.output
    result = _report(settings.home, "--control", "nobody")
    assert result.exit_code == 2
    assert "pass --control" in result.output
