"""The quality gate: checks on the silver tables one compact run produced, one report row each.

The gate reads the tables at the exact Delta versions recorded in the ``compact`` manifest, so it
judges what training will read. Every check is a small function ``(GateContext) ->
list[CheckResult]`` listed in :data:`CHECKS`; adding a check is adding one function. Table-level
rules (which rows are invalid) are data in :data:`SILVER_RULES`. Results are MERGEd into
``quality_reports`` on (run_date, table_name, check_name), so a rerun replaces its rows; when
any check fails, :class:`~flixlake.batch.errors.GateFailedError` names the failed checks after the
rows and the ``quality`` manifest (``passed: false``) are written.

Checks on the log lines judge **the run's days** only, with history as the reference: the days
after the previous gate run (passed or not) up to the run date — just the run date when runs are
daily, and on the first run. They read bronze at the version compact pinned, only those days'
partitions (a line's ``event_date``: its event day, or for a line that did not parse the day of
the parsed lines around it, see :mod:`flixlake.lake.bronze`). So a bad day fails its own gate and
no later one, and a good day is not failed by an old incident: ``duplicate_fraction`` and
``quarantine_fraction`` are fractions of the run days' lines, and ``daily_volume`` compares the
quietest run day with the median of the ``volume_reference_days`` days before them that have
lines. Silver tables hold all history up to the run date, so their ``volume`` compares row
counts with the last earlier run whose checks all passed: a drop means lost data.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from flixlake.batch.errors import GateFailedError
from flixlake.batch.silver import dedupe_events, parsed_events
from flixlake.config import Settings
from flixlake.contract.logformat import RejectReason
from flixlake.lake.runs import read_manifest, write_manifest
from flixlake.lake.spark_io import read_table
from flixlake.lake.store import Lake
from flixlake.lake.tables import QUALITY_REPORTS, table_spec

BRONZE = "bronze_events"


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check on one table (one ``quality_reports`` row)."""

    table_name: str
    check_name: str
    passed: bool
    observed: float | None
    threshold: float | None
    details: str

    @property
    def label(self) -> str:
        return f"{self.table_name}.{self.check_name}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "table_name": self.table_name,
            "check_name": self.check_name,
            "passed": self.passed,
            "observed": self.observed,
            "threshold": self.threshold,
            "details": self.details,
        }


@dataclass(frozen=True)
class TableRules:
    """What must hold for one silver table beyond its registered schema."""

    name: str
    # rule -> SQL predicate that is TRUE for a bad row; ``{run_date}`` is filled in
    invalid_rows: Mapping[str, str]
    has_movie_idx: bool = True


SILVER_RULES: tuple[TableRules, ...] = (
    TableRules(
        "watch_sessions",
        {
            "minutes_watched >= 1": "minutes_watched < 1",
            "max_minute >= minutes_watched - 1": "max_minute < minutes_watched - 1",
            "first_time <= last_time": "first_time > last_time",
            "event_date <= run_date": "event_date > DATE'{run_date}'",
        },
    ),
    TableRules(
        "ratings",
        {
            "rating in 1..5": "rating < 1 OR rating > 5",
            "rated_at on or before run_date": "to_date(rated_at) > DATE'{run_date}'",
        },
    ),
    TableRules(
        "reco_requests",
        {
            "status in 100..599": "status < 100 OR status > 599",
            "n_results >= 0": "n_results < 0",
            "response_ms >= 0": "response_ms < 0",
            "event_date <= run_date": "event_date > DATE'{run_date}'",
        },
        has_movie_idx=False,
    ),
)


def _fraction(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _count_if(condition: Column) -> Column:
    return F.sum(F.when(condition, 1).otherwise(0))


def _days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def _label(days: list[dt.date]) -> str:
    return days[0].isoformat() if len(days) == 1 else f"{days[0]}..{days[-1]}"


# -- pure transforms over bronze ---------------------------------------------------------------
def dated_between(first: dt.date, last: dt.date) -> Callable[[DataFrame], DataFrame]:
    """Rows whose ``event_date`` (bronze's partition column: days are pruned) is in [first, last]."""

    def transform(df: DataFrame) -> DataFrame:
        return df.filter(F.col("event_date").between(F.lit(first), F.lit(last)))

    return transform


def line_counts_df(bronze_df: DataFrame) -> DataFrame:
    """One row: lines, parsed, quarantined (bad) and duplicate-rejected lines, distinct events.

    Repeats are in-batch duplicate rejects plus parsed lines beyond the distinct events (a line
    re-sent in another batch or at another offset), which compaction collapses.
    """
    ok = F.col("parse_status") == "ok"
    dup = F.col("reject_reason").eqNullSafe(RejectReason.DUPLICATE.value)
    counts = bronze_df.agg(
        F.count(F.lit(1)).alias("lines"),
        _count_if(ok).alias("parsed"),
        _count_if(~ok & ~dup).alias("quarantined"),
        _count_if(~ok & dup).alias("duplicate_rejects"),
    )
    unique = (
        bronze_df.transform(parsed_events)
        .transform(dedupe_events)
        .agg(F.count(F.lit(1)).alias("unique_events"))
    )
    return counts.crossJoin(unique)


def lines_per_day_df(bronze_df: DataFrame) -> DataFrame:
    """Lines per ``event_date`` (days without lines have no row)."""
    return bronze_df.groupBy("event_date").agg(F.count(F.lit(1)).alias("lines"))


@dataclass
class GateContext:
    """What checks look at: the run, its compact manifest, and lazily computed table profiles."""

    spark: SparkSession
    lake: Lake
    settings: Settings
    run_date: dt.date
    compact: dict[str, Any]
    _profiles: dict[str, dict[str, int]] = field(default_factory=dict)
    _reports: pa.Table | None = None
    _window_counts: dict[str, int] | None = None
    _lines_per_day: dict[dt.date, int] | None = None

    def version(self, name: str) -> int:
        """The Delta version of ``name`` that compact produced for this run."""
        versions = self.compact.get("output_versions") or {}
        if versions.get(name) is None:
            raise KeyError(f"the compact manifest of {self.run_date} has no version for {name!r}")
        return int(versions[name])

    def frame(self, name: str) -> DataFrame:
        return read_table(self.spark, self.lake, name, self.version(name))

    def bronze(self) -> DataFrame:
        """Bronze at the version compact read for this run."""
        return read_table(self.spark, self.lake, BRONZE, int(self.compact["bronze_version"]))

    def reports(self) -> pa.Table:
        """Every run's ``quality_reports`` rows (read once)."""
        if self._reports is None:
            self._reports = (
                self.lake.read(
                    "quality_reports",
                    columns=["run_date", "table_name", "check_name", "passed", "observed"],
                )
                if self.lake.exists("quality_reports")
                else QUALITY_REPORTS.schema.empty_table()
            )
        return self._reports

    def run_days(self) -> list[dt.date]:
        """The days this run judges: after the previous gate run (any outcome) to the run date."""
        reports = self.reports()
        earlier = reports.filter(pc.less(reports["run_date"], pa.scalar(self.run_date)))
        previous = pc.max(earlier["run_date"]).as_py() if earlier.num_rows else None
        first = previous + dt.timedelta(days=1) if previous else self.run_date
        return _days(first, self.run_date)

    def reference_days(self) -> list[dt.date]:
        """The ``volume_reference_days`` days before the run's days."""
        n = self.settings.batch.quality.volume_reference_days
        first = self.run_days()[0]
        return _days(first - dt.timedelta(days=n), first - dt.timedelta(days=1))

    def window_counts(self) -> dict[str, int]:
        """:func:`line_counts_df` over the run's days."""
        if self._window_counts is None:
            days = self.run_days()
            row = (
                self.bronze()
                .transform(dated_between(days[0], days[-1]))
                .transform(line_counts_df)
                .first()
            )
            self._window_counts = {k: int(v or 0) for k, v in (row.asDict() if row else {}).items()}
        return self._window_counts

    def lines_per_day(self) -> dict[dt.date, int]:
        """Lines per day over the reference and run days (days without lines absent)."""
        if self._lines_per_day is None:
            rows = (
                self.bronze()
                .transform(dated_between(self.reference_days()[0], self.run_date))
                .transform(lines_per_day_df)
                .collect()  # one row per day: a few dozen at most
            )
            self._lines_per_day = {r["event_date"]: int(r["lines"]) for r in rows}
        return self._lines_per_day

    def profile(self, rules: TableRules) -> dict[str, int]:
        """Row count, nulls per required column, bad rows per rule, unknown movies: one scan."""
        if rules.name not in self._profiles:
            spec = table_spec(rules.name)
            df = self.frame(rules.name)
            aggs = [F.count(F.lit(1)).alias("rows")]
            aggs += [
                F.count_if(F.col(f.name).isNull()).alias(f"null:{f.name}")
                for f in spec.schema
                if not f.nullable
            ]
            aggs += [
                F.count_if(F.expr(predicate.format(run_date=self.run_date.isoformat()))).alias(
                    f"invalid:{rule}"
                )
                for rule, predicate in rules.invalid_rows.items()
            ]
            if rules.has_movie_idx:
                known = F.broadcast(
                    self.frame("movies")
                    .select("movie_id", "movie_idx")
                    .withColumn("__known", F.lit(True))
                )
                df = df.join(known, on=["movie_id", "movie_idx"], how="left")
                aggs.append(F.count_if(F.col("__known").isNull()).alias("unknown_movies"))
            row = df.agg(*aggs).first()
            self._profiles[rules.name] = (
                {k: int(v or 0) for k, v in row.asDict().items()} if row else {}
            )
        return self._profiles[rules.name]

    def duplicate_keys(self, name: str) -> tuple[int, int]:
        """(keys seen more than once, surplus rows) for the table's natural key."""
        keys = list(table_spec(name).keys)
        row = (
            self.frame(name)
            .groupBy(*keys)
            .count()
            .filter(F.col("count") > 1)
            .agg(F.count(F.lit(1)).alias("keys"), F.sum(F.col("count") - 1).alias("surplus"))
            .first()
        )
        return (int(row["keys"] or 0), int(row["surplus"] or 0)) if row else (0, 0)

    def previous_passing_run(self) -> tuple[dt.date, dict[str, float]] | None:
        """The latest earlier run whose checks all passed, with its ``volume`` rows per table."""
        reports = self.reports()
        reports = reports.filter(pc.less(reports["run_date"], pa.scalar(self.run_date)))
        failed = set(reports.filter(pc.invert(reports["passed"]))["run_date"].to_pylist())
        passing = sorted(set(reports["run_date"].to_pylist()) - failed)
        if not passing:
            return None
        last = passing[-1]
        volume = {
            r["table_name"]: float(r["observed"])
            for r in reports.to_pylist()
            if r["run_date"] == last and r["check_name"] == "volume" and r["observed"] is not None
        }
        return last, volume

    def table_rows(self, name: str) -> int:
        return self.profile(_rules(name))["rows"]


def _rules(name: str) -> TableRules:
    return next(r for r in SILVER_RULES if r.name == name)


Check = Callable[[GateContext], list[CheckResult]]


# -- the checks --------------------------------------------------------------------------------
def check_schema(ctx: GateContext) -> list[CheckResult]:
    """Each table's Delta schema equals the registry's (names, order, types, nullability)."""
    results = []
    for name in [*(r.name for r in SILVER_RULES), "movies"]:
        expected = table_spec(name).schema
        actual = pa.schema(ctx.lake.table(name, ctx.version(name)).schema().to_arrow())
        problems = [
            f"{e.name}: expected {e.type}{'' if e.nullable else ' not null'}, "
            f"found {a.type}{'' if a.nullable else ' not null'}"
            for e, a in zip(expected, actual, strict=False)
            if e.name != a.name or e.type != a.type or e.nullable != a.nullable
        ]
        if len(expected) != len(actual):
            problems.append(f"expected columns {expected.names}, found {actual.names}")
        results.append(
            CheckResult(
                name,
                "schema",
                not problems,
                float(len(problems)),
                0.0,
                "; ".join(problems) or "matches the registry",
            )
        )
    return results


def check_key_nulls(ctx: GateContext) -> list[CheckResult]:
    """Required columns hold no (or at most the allowed fraction of) nulls."""
    limit = ctx.settings.batch.quality.max_null_fraction
    results = []
    for rules in SILVER_RULES:
        profile = ctx.profile(rules)
        nulls = {k.removeprefix("null:"): v for k, v in profile.items() if k.startswith("null:")}
        worst = max((_fraction(n, profile["rows"]) for n in nulls.values()), default=0.0)
        found = ", ".join(f"{c}: {n}" for c, n in nulls.items() if n)
        results.append(
            CheckResult(
                rules.name,
                "null_keys",
                worst <= limit,
                worst,
                limit,
                f"nulls in {found}" if found else f"no nulls in {', '.join(nulls)}",
            )
        )
    return results


def check_value_ranges(ctx: GateContext) -> list[CheckResult]:
    """No row breaks a table rule (minutes >= 1, rating 1..5, nothing after the run date...)."""
    results = []
    for rules in SILVER_RULES:
        profile = ctx.profile(rules)
        bad = {r: profile[f"invalid:{r}"] for r in rules.invalid_rows}
        broken = ", ".join(f"{n} rows break {r!r}" for r, n in bad.items() if n)
        results.append(
            CheckResult(
                rules.name,
                "value_ranges",
                not broken,
                float(sum(bad.values())),
                0.0,
                broken or f"all rows satisfy {', '.join(rules.invalid_rows)}",
            )
        )
    return results


def check_known_movies(ctx: GateContext) -> list[CheckResult]:
    """Every (movie_id, movie_idx) pair exists in ``movies``: ALS ids must resolve to slugs."""
    results = []
    for rules in SILVER_RULES:
        if not rules.has_movie_idx:
            continue
        unknown = ctx.profile(rules)["unknown_movies"]
        results.append(
            CheckResult(
                rules.name,
                "known_movies",
                unknown == 0,
                float(unknown),
                0.0,
                f"{unknown} rows with a movie_idx not in movies v{ctx.version('movies')}"
                if unknown
                else f"every movie_idx is in movies v{ctx.version('movies')}",
            )
        )
    return results


def check_duplicate_keys(ctx: GateContext) -> list[CheckResult]:
    """A table's natural key is unique (one session per user/movie/day, one rating per pair)."""
    results = []
    for rules in SILVER_RULES:
        keys = table_spec(rules.name).keys
        if not keys:
            continue
        dup_keys, surplus = ctx.duplicate_keys(rules.name)
        results.append(
            CheckResult(
                rules.name,
                "duplicate_keys",
                surplus == 0,
                float(surplus),
                0.0,
                f"{dup_keys} keys ({', '.join(keys)}) appear more than once ({surplus} extra rows)"
                if surplus
                else f"({', '.join(keys)}) is unique",
            )
        )
    return results


def check_duplicate_fraction(ctx: GateContext) -> list[CheckResult]:
    """Few of the run days' lines arrived twice; many mean a replaying producer or ingest."""
    counts = ctx.window_counts()
    dropped = counts["parsed"] - counts["unique_events"]
    dups = counts["duplicate_rejects"] + dropped
    limit = ctx.settings.batch.quality.max_duplicate_fraction
    observed = _fraction(dups, counts["lines"])
    return [
        CheckResult(
            BRONZE,
            "duplicate_fraction",
            observed <= limit,
            observed,
            limit,
            f"{dups} of {counts['lines']} lines dated {_label(ctx.run_days())} were repeats "
            f"({counts['duplicate_rejects']} within an ingest batch, {dropped} across batches)",
        )
    ]


def check_quarantine_fraction(ctx: GateContext) -> list[CheckResult]:
    """Few of the run days' lines failed to parse; many mean a changed format or a bad feed."""
    counts = ctx.window_counts()
    limit = ctx.settings.batch.quality.max_quarantine_fraction
    observed = _fraction(counts["quarantined"], counts["lines"])
    return [
        CheckResult(
            BRONZE,
            "quarantine_fraction",
            observed <= limit,
            observed,
            limit,
            f"{counts['quarantined']} of {counts['lines']} lines dated {_label(ctx.run_days())} "
            "quarantined (repeats count under duplicate_fraction)",
        )
    ]


def check_daily_volume(ctx: GateContext) -> list[CheckResult]:
    """Every run day has lines, not far fewer than the days before it had (a broken feed)."""
    ratio = ctx.settings.batch.quality.min_volume_ratio
    per_day = ctx.lines_per_day()
    days = ctx.run_days()
    quietest = min(days, key=lambda d: per_day.get(d, 0))
    lines = per_day.get(quietest, 0)
    reference_days = ctx.reference_days()
    reference = [per_day[d] for d in reference_days if per_day.get(d, 0) > 0]
    span = _label(reference_days)
    if not reference:
        return [
            CheckResult(
                BRONZE,
                "daily_volume",
                True,
                float(lines),
                None,
                f"{lines} lines on {quietest}, the quietest run day; no lines on {span} "
                "to compare with",
            )
        ]
    median = statistics.median(reference)
    minimum = median * ratio
    return [
        CheckResult(
            BRONZE,
            "daily_volume",
            lines >= minimum,
            float(lines),
            minimum,
            f"{lines} lines on {quietest}, the quietest run day, vs a median of {median:g} a day "
            f"on {len(reference)} days of {span} (at least {ratio:g} x as many required)",
        )
    ]


def check_volume(ctx: GateContext) -> list[CheckResult]:
    """Silver row counts did not collapse against the last passing run (lost data)."""
    ratio = ctx.settings.batch.quality.min_volume_ratio
    previous = ctx.previous_passing_run()
    results = []
    for name in [r.name for r in SILVER_RULES]:
        rows = ctx.table_rows(name)
        before = previous[1].get(name) if previous else None
        if previous is None or before is None:
            results.append(
                CheckResult(
                    name,
                    "volume",
                    True,
                    float(rows),
                    None,
                    f"{rows} rows; first run: no earlier passing run to compare with",
                )
            )
            continue
        minimum = before * ratio
        results.append(
            CheckResult(
                name,
                "volume",
                rows >= minimum,
                float(rows),
                minimum,
                f"{rows} rows vs {before:.0f} on {previous[0]}, the last passing run "
                f"(at least {ratio:g} x as many required)",
            )
        )
    return results


CHECKS: tuple[Check, ...] = (
    check_schema,
    check_key_nulls,
    check_value_ranges,
    check_known_movies,
    check_duplicate_keys,
    check_duplicate_fraction,
    check_quarantine_fraction,
    check_daily_volume,
    check_volume,
)


# -- the batch step ----------------------------------------------------------------------------
def report_rows(results: list[CheckResult], run_date: dt.date, checked_at: dt.datetime) -> pa.Table:
    """``quality_reports`` rows for one run's results."""
    return pa.Table.from_pylist(
        [{**r.as_dict(), "run_date": run_date, "checked_at": checked_at} for r in results],
        schema=QUALITY_REPORTS.schema,
    )


def run_quality_gate(
    spark: SparkSession, lake: Lake, settings: Settings, run_date: dt.date
) -> dict[str, Any]:
    """Check what compact produced for this run; record every check; raise when one fails."""
    compact = read_manifest(settings, run_date, "compact")
    ctx = GateContext(spark, lake, settings, run_date, compact)
    results = [result for check in CHECKS for result in check(ctx)]
    checked_at = dt.datetime.now(dt.UTC)  # bookkeeping only; no decision depends on it
    lake.upsert("quality_reports", report_rows(results, run_date, checked_at))
    failed = [r for r in results if not r.passed]
    summary: dict[str, Any] = {
        "run_date": run_date.isoformat(),
        "passed": not failed,
        "failed": [r.label for r in failed],
        "bronze_version": compact.get("bronze_version"),
        "input_versions": compact.get("output_versions"),
        "checks": [r.as_dict() for r in results],
    }
    write_manifest(settings, run_date, "quality", summary)
    if failed:
        raise GateFailedError(
            f"quality gate failed for {run_date}: "
            + "; ".join(f"{r.label} ({r.details})" for r in failed)
        )
    return summary
