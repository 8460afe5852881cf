"""The quality gate: checks on the silver tables one compact run produced, one report row each.

The gate reads the tables at the exact Delta versions recorded in the ``compact`` manifest, so it
judges what training will read. Every check is a small function ``(GateContext) ->
list[CheckResult]`` listed in :data:`CHECKS`; adding a check is adding one function. Table-level
rules (which rows are invalid) are data in :data:`SILVER_RULES`. Results are MERGEd into
``quality_reports`` on (run_date, table_name, check_name), so a rerun replaces its rows; when
any check fails, :class:`~flixlake.batch.errors.GateFailedError` names the failed checks after the
rows and the ``quality`` manifest (``passed: false``) are written.

Line fractions use the manifest's counts: lines are the parsed lines up to the run date plus
every rejected line (a reject is dated by its ingest day, as its event time is unknown). Volume
compares row counts with the last earlier run whose checks all passed; silver tables hold all
history up to the run date, so a drop means lost data rather than a quiet day.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from flixlake.batch.errors import GateFailedError
from flixlake.config import Settings
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

    def version(self, name: str) -> int:
        """The Delta version of ``name`` that compact produced for this run."""
        versions = self.compact.get("output_versions") or {}
        if versions.get(name) is None:
            raise KeyError(f"the compact manifest of {self.run_date} has no version for {name!r}")
        return int(versions[name])

    def frame(self, name: str) -> DataFrame:
        return read_table(self.spark, self.lake, name, self.version(name))

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
        if self._reports is None:
            self._reports = (
                self.lake.read(
                    "quality_reports",
                    columns=["run_date", "table_name", "check_name", "passed", "observed"],
                )
                if self.lake.exists("quality_reports")
                else QUALITY_REPORTS.schema.empty_table()
            )
        reports = self._reports.filter(pc.less(self._reports["run_date"], pa.scalar(self.run_date)))
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
        if name == BRONZE:
            return int(self.compact["lines"]["total"])
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
    """Few lines arrived twice; many repeats mean a replaying producer or a broken ingest."""
    lines = ctx.compact["lines"]
    dups = int(lines["duplicate_rejects"]) + int(lines["duplicates_dropped"])
    limit = ctx.settings.batch.quality.max_duplicate_fraction
    observed = _fraction(dups, int(lines["total"]))
    return [
        CheckResult(
            BRONZE,
            "duplicate_fraction",
            observed <= limit,
            observed,
            limit,
            f"{dups} of {lines['total']} lines were repeats "
            f"({lines['duplicate_rejects']} within an ingest batch, "
            f"{lines['duplicates_dropped']} across batches)",
        )
    ]


def check_quarantine_fraction(ctx: GateContext) -> list[CheckResult]:
    """Few lines failed to parse; many mean a changed log format or a corrupted feed."""
    lines = ctx.compact["lines"]
    limit = ctx.settings.batch.quality.max_quarantine_fraction
    observed = _fraction(int(lines["quarantined"]), int(lines["total"]))
    return [
        CheckResult(
            BRONZE,
            "quarantine_fraction",
            observed <= limit,
            observed,
            limit,
            f"{lines['quarantined']} of {lines['total']} lines quarantined "
            f"({lines['quarantined_on_run_date']} of {lines['on_run_date']} dated on the run date; "
            "repeats count under duplicate_fraction)",
        )
    ]


def check_volume(ctx: GateContext) -> list[CheckResult]:
    """Row counts did not collapse against the last passing run (lost data, a broken feed)."""
    ratio = ctx.settings.batch.quality.min_volume_ratio
    previous = ctx.previous_passing_run()
    results = []
    for name in [BRONZE, *(r.name for r in SILVER_RULES)]:
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
