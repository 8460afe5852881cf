"""Online evaluation: conversions on a hand-made example, idempotent hours, statistics, the CLI."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from statistics import NormalDist
from typing import Any

import pyarrow as pa
import pytest
from pyspark.sql import SparkSession
from typer.testing import CliRunner

from flixlake.config import Settings
from flixlake.experiments.online import evaluation_hours, run_online_evaluation
from flixlake.experiments.stats import compare_variants, two_proportion_test, wilson_interval
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
]
# (served_hour, variant, model_version) -> (served, converted), worked out by hand from the above
EXPECTED = {
    (t(21, 23), "control", "m0"): (1, 1),
    (t(22, 9), "control", "m1"): (2, 1),
    (t(22, 9), "treatment", "m2"): (4, 2),
    (t(22, 10), "control", "m1"): (1, 1),
}


def _seed(lake: Lake) -> None:
    lake.append(
        "served_recommendations",
        pa.Table.from_pylist(ANSWERS, schema=SERVED_RECOMMENDATIONS.schema),
    )
    lake.append("bronze_events", pa.Table.from_pylist(EVENTS, schema=BRONZE_EVENTS.schema))


def _evaluations(lake: Lake) -> dict[tuple[dt.datetime, str, str], tuple[int, int]]:
    rows = lake.read("online_evaluations").to_pylist()
    keys = [(r["served_hour"], r["variant"], r["model_version"]) for r in rows]
    assert len(keys) == len(set(keys)), f"duplicate rows: {keys}"
    for r in rows:
        assert r["experiment"] == "default"
        assert r["window_seconds"] == 3600
        assert r["served_date"] == r["served_hour"].date()
    return {
        (r["served_hour"], r["variant"], r["model_version"]): (r["served"], r["converted"])
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
    assert (summary["rows"], summary["served"], summary["converted"]) == (4, 8, 5)


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
    assert _evaluations(lake) == first == {**EXPECTED, (t(20, 5), "control", "m1"): (40, 0)}


def test_an_hour_is_evaluated_once_its_watch_window_has_passed(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    _seed(lake)
    run_online_evaluation(spark, lake, settings, t(22, 12, 59))
    assert (t(22, 11), "control", "m1") not in _evaluations(lake)
    run_online_evaluation(spark, lake, settings, t(22, 13))
    got = _evaluations(lake)
    assert got[(t(22, 11), "control", "m1")] == (1, 1)
    assert got[(t(22, 10), "control", "m1")] == (1, 1)  # recomputed, not duplicated


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


# -- statistics, checked against the textbook formulas ------------------------------------------
Z95 = NormalDist().inv_cdf(0.975)


def test_two_proportion_test_matches_the_textbook() -> None:
    # 150/1000 (variant) vs 120/1000 (control)
    pooled = 270 / 2000
    z = (0.15 - 0.12) / math.sqrt(pooled * (1 - pooled) * (2 / 1000))
    p = math.erfc(abs(z) / math.sqrt(2))  # two-sided
    se = math.sqrt(0.15 * 0.85 / 1000 + 0.12 * 0.88 / 1000)
    assert z == pytest.approx(1.9630, abs=1e-4)
    assert p == pytest.approx(0.0496, abs=1e-4)

    got = two_proportion_test(150, 1000, 120, 1000, 0.95)
    assert got.z == pytest.approx(z, rel=1e-9)
    assert got.p_value == pytest.approx(p, rel=1e-9)
    assert got.diff == pytest.approx(0.03, rel=1e-12)
    assert got.diff_low == pytest.approx(0.03 - Z95 * se, rel=1e-9)
    assert got.diff_high == pytest.approx(0.03 + Z95 * se, rel=1e-9)
    # the other way round: same p, opposite z
    back = two_proportion_test(120, 1000, 150, 1000, 0.95)
    assert (back.z, back.p_value) == (pytest.approx(-z), pytest.approx(p))


def test_two_proportion_test_of_identical_extremes_is_not_significant() -> None:
    got = two_proportion_test(0, 10, 0, 20, 0.95)
    assert (got.diff, got.z, got.p_value) == (0.0, 0.0, 1.0)


@pytest.mark.parametrize(("k", "n"), [(120, 1000), (3, 10), (0, 10), (10, 10)])
def test_wilson_interval_matches_the_textbook(k: int, n: int) -> None:
    p = k / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 / (1 + Z95**2 / n) * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n))
    low, high = wilson_interval(k, n, 0.95)
    assert low == pytest.approx(max(0.0, centre - half), abs=1e-12)
    assert high == pytest.approx(min(1.0, centre + half), abs=1e-12)


def _row(variant: str, model: str, served: int, converted: int, hour: int = 9) -> dict[str, Any]:
    return {
        "served_hour": t(22, hour),
        "experiment": "default",
        "model_version": model,
        "variant": variant,
        "served": served,
        "converted": converted,
        "window_seconds": 3600,
        "computed_at": UNTIL,
        "served_date": t(22, hour).date(),
    }


# 120/1000 vs 150/1000 over two hours and, for the treatment, two model versions
ROWS = [
    _row("control", "m1", 600, 70, 9),
    _row("control", "m1", 400, 50, 10),
    _row("treatment", "m2", 500, 80, 9),
    _row("treatment", "m3", 500, 70, 10),
    _row("canary", "m3", 50, 10, 10),
]


def test_variants_are_summed_and_tested_against_the_control() -> None:
    control, canary, treatment = compare_variants(ROWS, "control", 0.95, min_served=100)
    assert (control.variant, control.served, control.converted) == ("control", 1000, 120)
    assert (control.verdict, control.comparison) == ("control", None)
    assert (treatment.served, treatment.converted) == (1000, 150)
    assert treatment.model_versions == ("m2", "m3")
    assert treatment.comparison is not None
    assert treatment.comparison.p_value == pytest.approx(0.0496, abs=1e-4)
    assert treatment.verdict == "significant at 95%"
    assert (canary.served, canary.comparison, canary.verdict) == (50, None, "too few answers")
    assert canary.rate == 0.2  # shown all the same, with its interval
    assert canary.ci_low < 0.2 < canary.ci_high

    strict = compare_variants(ROWS, "control", 0.99, min_served=100)
    assert strict[2].verdict == "not significant"
    with pytest.raises(LookupError, match="'nobody'"):
        compare_variants(ROWS, "nobody", 0.95, min_served=100)


# -- flixlake experiment report ------------------------------------------------------------------
def _report(home: Path, *args: str) -> Any:
    return CliRunner().invoke(
        app,
        ["experiment", "report", "--env", "test", "--home", str(home), *args],
        env={"COLUMNS": "240"},
    )


def test_report_prints_the_comparison_and_writes_html(lake: Lake, settings: Settings) -> None:
    lake.append("online_evaluations", pa.Table.from_pylist(ROWS, ONLINE_EVALUATIONS.schema))
    result = _report(settings.home)
    assert result.exit_code == 0, result.output
    for text in ("control", "treatment", "canary", "0.0496", "1.963", "significant at 95%"):
        assert text in result.output
    assert "too few answers" in result.output
    page = settings.artifacts_root / "experiments" / "default" / "report.html"
    assert f"report: {page}" in result.output
    html = page.read_text()
    assert "<img src='watch_through.png'" in html
    assert "0.0496" in html
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
        line.split()[0]: line.split()[1:4]
        for line in result.output.splitlines()
        if line.split()[:1] in (["control"], ["treatment"], ["canary"])
    }
    assert cells == {  # the 10:00 rows only: model version, served, converted
        "treatment": ["m3", "500", "70"],
        "canary": ["m3", "50", "10"],
        "control": ["m1", "400", "50"],
    }
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
