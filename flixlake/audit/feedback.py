"""Feedback loops over successive retrains: does what the system shows narrow what users watch?

Recommendations shape what users watch, what users watch trains the next model, and that model
shapes the next recommendations. If the loop *tightens*, each retrain shows fewer, more popular
movies, and what users watch follows. This module measures that, per **retrain cycle** — the
time one model version was the current published one, from its ``published_at`` until the next
published model's (the newest: until now) — and per group of users (each experiment variant, and
everyone), from ``models`` (when each version went live), ``served_recommendations`` (what was
shown) and ``bronze_events`` (what was watched):

* **served**: the slots shown (answers with status 200 × their movies);
* **personalised**: the slots of answers a model gave a user it knows (the user is in that
  model's batch view): the model's own part of what was served, without the trending/popular
  lists every unknown user shares. Early cycles serve many users the first model did not know;
  as retrains learn them, *served* concentration falls for that reason alone, which this kind
  leaves out;
* **watched**: the (user, movie) pairs watched for the first time in the cycle (re-watches are
  not new choices), attributed to the user's experiment variant (from their answers; users the
  service never answered count for everyone only). ``recommended_share`` is the share of them
  that had been recommended to that user before the first watched minute: how much of what is
  watched the system chose.

For each, over the catalog (the ``movies`` table; a movie never shown or watched counts as 0):
**coverage** (share of movies with at least one), **Gini** of the counts per movie (0: even; near
1: a few movies take everything), **long-tail share** (of slots or pairs, on movies outside the
short head), and **average popularity** (mean over slots or pairs of the movie's popularity).

Popularity and the short head are judged against one **fixed reference**: the share of users who
watched each movie before the first cycle (the history the first model learned from), and the
most-watched ``head_share`` (20 %) of the catalog by it. A reference recomputed per cycle would
move with the loop and hide it.

The loop tightens when, cycle after cycle, served and watched Gini and average popularity rise
and coverage and long-tail share fall. An exploration variant (model ``explore``) is the
control: its lists are drawn uniformly from the catalog whatever happened before, so what its
users watch reflects their taste alone; the gap between a model variant's watched popularity
and the exploration variant's in the same cycle is what the loop adds.

>>> rows = feedback_audit(spark, lake, "default").rows               # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, StructField, StructType, TimestampType

from flixlake.batch.fairness import exposure, short_head
from flixlake.contract.logformat import as_utc
from flixlake.lake.registry import PUBLISHED, ROLLED_BACK, model_rows
from flixlake.lake.spark_io import read_table
from flixlake.lake.store import Lake
from flixlake.lake.tables import (
    BATCH_RECOMMENDATIONS,
    BRONZE_EVENTS,
    MOVIES,
    SERVED_RECOMMENDATIONS,
)

ALL_USERS = "(all)"  # the group of every user (parentheses: never a variant name)
SERVED = "served"
PERSONALISED = "personalised"
WATCHED = "watched"
KINDS = (SERVED, PERSONALISED, WATCHED)
HEAD_SHARE = 0.2  # the short head's default share of the catalog (audit.head_share in config)


class NoCyclesError(LookupError):
    """No published model yet: there is no retrain cycle to audit."""


@dataclass(frozen=True)
class Cycle:
    """The time one model version was the current published model."""

    index: int  # 0 for the first model in the audit
    model_version: str
    start: dt.datetime  # its published_at (UTC)
    end: dt.datetime | None  # the next model's published_at; None while it is current


def retrain_cycles(models: Iterable[Mapping[str, Any]]) -> list[Cycle]:
    """Published (or since rolled back) models in ``published_at`` order, each current until
    the next one was published. (A rollback makes an older model current again without a new
    ``published_at``; the answers' own ``model_version`` shows it.)"""
    live = sorted(
        (
            r
            for r in models
            if r.get("published_at") is not None and r.get("status") in (PUBLISHED, ROLLED_BACK)
        ),
        key=lambda r: (as_utc(r["published_at"]), str(r["model_version"])),
    )
    starts = [as_utc(r["published_at"]) for r in live]
    return [
        Cycle(i, str(r["model_version"]), starts[i], starts[i + 1] if i + 1 < len(live) else None)
        for i, r in enumerate(live)
    ]


# -- transformations -----------------------------------------------------------------------------
def first_watches(bronze_df: DataFrame) -> DataFrame:
    """``(user_id, movie_id, first_watched)``: when each user first watched each movie."""
    return (
        bronze_df.where(
            (F.col("parse_status") == "ok")
            & (F.col("event_type") == "watch")
            & F.col("user_id").isNotNull()
            & F.col("movie_id").isNotNull()
            & F.col("event_time").isNotNull()
        )
        .groupBy("user_id", "movie_id")
        .agg(F.min("event_time").alias("first_watched"))
    )


def answered(served_df: DataFrame, experiment: str) -> DataFrame:
    """The experiment's answers with status 200 and movies, once per request id."""
    return (
        served_df.where(
            (F.col("experiment") == experiment) & (F.col("status") == 200) & (F.size("items") > 0)
        )
        .dropDuplicates(["request_id"])
        .select("request_id", "user_id", "variant", "model_version", "served_at", "items")
    )


def personalised(answers_df: DataFrame, batch_view_df: DataFrame) -> DataFrame:
    """The answers whose model knows their user (the user is in its batch view)."""
    known = batch_view_df.select("model_version", "user_id").distinct()
    return answers_df.join(known, ["model_version", "user_id"], "left_semi")


def served_slots(answers_df: DataFrame) -> DataFrame:
    """``(user_id, variant, served_at, movie_id)``: one row per movie shown."""
    return answers_df.select(
        "user_id", "variant", "served_at", F.explode("items").alias("movie_id")
    )


def user_variants(answers_df: DataFrame) -> DataFrame:
    """``(user_id, variant)``: the variant of each user's first answer (routing keeps a user in
    one variant while the experiment's split stays the same)."""
    return answers_df.groupBy("user_id").agg(
        F.min_by("variant", F.struct("served_at", "request_id")).alias("variant")
    )


def cycles_df(spark: SparkSession, cycles: Sequence[Cycle]) -> DataFrame:
    """The cycles as a small DataFrame ``(cycle, cycle_start, cycle_end)`` (end null: open)."""
    schema = StructType(
        [
            StructField("cycle", IntegerType(), False),
            StructField("cycle_start", TimestampType(), False),
            StructField("cycle_end", TimestampType(), True),
        ]
    )
    return spark.createDataFrame([(c.index, c.start, c.end) for c in cycles], schema)


def with_cycle(df: DataFrame, time_column: str, cycles: DataFrame) -> DataFrame:
    """Add ``cycle``: the retrain cycle ``time_column`` falls in (rows outside every cycle are
    dropped)."""
    t = F.col(time_column)
    inside = (t >= F.col("cycle_start")) & (F.col("cycle_end").isNull() | (t < F.col("cycle_end")))
    return df.join(F.broadcast(cycles), inside).drop("cycle_start", "cycle_end")


def with_recommended(pairs_df: DataFrame, slots_df: DataFrame) -> DataFrame:
    """Add ``recommended`` (1/0): the movie was in an answer to that user served at or before
    the first watched minute (log times have whole seconds, so the answer's time is cut to its
    second, as in the online evaluation)."""
    shown = slots_df.select(
        "user_id", "movie_id", F.date_trunc("second", "served_at").alias("shown_at")
    )
    hits = (
        pairs_df.alias("p")
        .join(
            shown.alias("s"),
            (F.col("p.user_id") == F.col("s.user_id"))
            & (F.col("p.movie_id") == F.col("s.movie_id"))
            & (F.col("s.shown_at") <= F.col("p.first_watched")),
            "left_semi",
        )
        .select("user_id", "movie_id")
        .withColumn("recommended", F.lit(1))
    )
    return pairs_df.join(hits, ["user_id", "movie_id"], "left").fillna(0, subset=["recommended"])


def movie_counts(df: DataFrame, *extra: str) -> DataFrame:
    """Rows per ``(cycle, variant, movie_id)``, and the sum of each ``extra`` column."""
    sums = [F.sum(c).cast("long").alias(c) for c in extra]
    return df.groupBy("cycle", "variant", "movie_id").agg(F.count(F.lit(1)).alias("n"), *sums)


def group_users(df: DataFrame) -> DataFrame:
    """Distinct users per ``(cycle, variant)``, plus per cycle for everyone (variant null)."""
    per_variant = df.groupBy("cycle", "variant").agg(F.countDistinct("user_id").alias("users"))
    everyone = (
        df.groupBy("cycle")
        .agg(F.countDistinct("user_id").alias("users"))
        .withColumn("variant", F.lit(None).cast("string"))
    )
    return per_variant.where(F.col("variant").isNotNull()).unionByName(everyone)


# -- the audit -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeedbackRow:
    """The measures of one kind (served or watched) for one group of users in one cycle."""

    cycle: int
    model_version: str  # the current model in the cycle (a variant may serve another)
    start: dt.datetime
    end: dt.datetime | None
    group: str  # a variant, or ALL_USERS
    kind: str  # served | personalised | watched
    n: int  # slots shown, or new (user, movie) pairs watched
    users: int
    coverage: float
    gini: float
    long_tail_share: float
    avg_popularity: float
    recommended_share: float | None  # watched only: share recommended to the user before


@dataclass(frozen=True)
class FeedbackAudit:
    """Every cycle's rows, and the reference the popularity measures use."""

    experiment: str
    cycles: list[Cycle]
    rows: list[FeedbackRow]
    reference_users: int  # users who watched anything before the first cycle
    catalog_size: int
    head_size: int
    popularity: np.ndarray = field(repr=False)  # per catalog movie, in catalog order
    catalog: list[str] = field(repr=False)

    def series(self, group: str, kind: str, measure: str) -> list[float]:
        """One measure of one group and kind, cycle by cycle (NaN where nothing was counted)."""
        by_cycle = {r.cycle: r for r in self.rows if r.group == group and r.kind == kind}
        out = []
        for cycle in self.cycles:
            row = by_cycle.get(cycle.index)
            value = getattr(row, measure) if row is not None else None
            out.append(math.nan if value is None else float(value))
        return out

    def to_arrow(self) -> pa.Table:
        return pa.Table.from_pylist([asdict(r) for r in self.rows])


def result_rows(audit: FeedbackAudit) -> list[dict[str, str]]:
    """The audit as text rows (cycle, group, kind order) for terminal tables."""

    def num(value: float | None) -> str:
        return "" if value is None or math.isnan(value) else f"{value:.3f}"

    groups = sorted({r.group for r in audit.rows}, key=lambda g: (g == ALL_USERS, g))
    ordered = sorted(
        audit.rows, key=lambda r: (r.cycle, groups.index(r.group), KINDS.index(r.kind))
    )
    return [
        {
            "cycle": str(r.cycle),
            "model": r.model_version,
            "group": r.group,
            "kind": r.kind,
            "n": f"{r.n:,}",
            "users": f"{r.users:,}",
            "gini": num(r.gini),
            "coverage": num(r.coverage),
            "long tail": num(r.long_tail_share),
            "popularity": num(r.avg_popularity),
            "recommended": num(r.recommended_share),
        }
        for r in ordered
    ]


def trend(values: Sequence[float]) -> float:
    """Least-squares change per cycle (NaN values skipped; NaN with fewer than two)."""
    y = np.asarray(values, dtype=np.float64)
    x = np.arange(y.size, dtype=np.float64)
    keep = ~np.isnan(y)
    if keep.sum() < 2:
        return math.nan
    return float(np.polyfit(x[keep], y[keep], 1)[0])


def _count_vectors(
    rows: list[dict[str, Any]], index: dict[str, int], size: int, extra: str | None = None
) -> tuple[dict[tuple[int, str | None], np.ndarray], dict[tuple[int, str | None], int]]:
    """``(cycle, variant)`` and ``(cycle, None)`` (everyone) -> counts per catalog movie, plus the
    sum of ``extra`` per key (movies outside the catalog are not counted)."""
    vectors: dict[tuple[int, str | None], np.ndarray] = {}
    extras: dict[tuple[int, str | None], int] = {}
    for r in rows:
        i = index.get(r["movie_id"])
        if i is None:
            continue
        keys: list[tuple[int, str | None]] = [(r["cycle"], None)]
        if r["variant"] is not None:
            keys.append((r["cycle"], r["variant"]))
        for key in keys:
            vector = vectors.setdefault(key, np.zeros(size, dtype=np.int64))
            vector[i] += r["n"]
            if extra is not None:
                extras[key] = extras.get(key, 0) + int(r[extra])
    return vectors, extras


def feedback_audit(
    spark: SparkSession,
    lake: Lake,
    experiment: str,
    head_share: float = HEAD_SHARE,
) -> FeedbackAudit:
    """Concentration and popularity of what was served and watched, per retrain cycle and group.

    Raises :class:`NoCyclesError` without a published model, and
    :class:`~flixlake.lake.store.MissingTableError` when a table it reads is missing.
    """
    cycles = retrain_cycles(model_rows(lake))
    if not cycles:
        raise NoCyclesError(f"no published model under {lake.root}: no retrain cycle to audit")
    catalog = [
        str(m)
        for m in lake.read(MOVIES.name, columns=["movie_idx", "movie_id"])
        .sort_by("movie_idx")["movie_id"]
        .to_pylist()
    ]
    index = {m: i for i, m in enumerate(catalog)}
    size = len(catalog)

    bronze = read_table(spark, lake, BRONZE_EVENTS.name)  # all of it: first watches, reference
    served = read_table(
        spark,
        lake,
        SERVED_RECOMMENDATIONS.name,
        partition_filter=f"served_date >= '{cycles[0].start.date().isoformat()}'",
    )
    versions = ", ".join("'" + c.model_version.replace("'", "''") + "'" for c in cycles)
    views = read_table(
        spark, lake, BATCH_RECOMMENDATIONS.name, partition_filter=f"model_version IN ({versions})"
    )
    periods = cycles_df(spark, cycles)
    answers = answered(served, experiment)
    slots = served_slots(answers)
    pairs = first_watches(bronze)

    first_start = cycles[0].start
    before = pairs.where(F.col("first_watched") < F.lit(first_start))
    reference_users = before.select("user_id").distinct().count()
    watchers = np.zeros(size, dtype=np.float64)
    for r in before.groupBy("movie_id").agg(F.countDistinct("user_id").alias("w")).collect():
        if r["movie_id"] in index:
            watchers[index[r["movie_id"]]] = r["w"]
    popularity = watchers / reference_users if reference_users else watchers
    head = short_head(watchers, head_share)

    shown = {
        SERVED: slots.transform(with_cycle, "served_at", periods),
        PERSONALISED: served_slots(personalised(answers, views)).transform(
            with_cycle, "served_at", periods
        ),
        WATCHED: pairs.transform(with_cycle, "first_watched", periods)
        .join(user_variants(answers), "user_id", "left")
        .transform(with_recommended, slots),
    }
    vectors, recommended = {}, {}
    for kind, df in shown.items():
        extra = "recommended" if kind == WATCHED else None
        rows = movie_counts(df, *([extra] if extra else [])).collect()
        vectors[kind], recommended[kind] = _count_vectors(
            [r.asDict() for r in rows], index, size, extra
        )
    users = {
        (kind, r["cycle"], r["variant"]): int(r["users"])
        for kind, df in shown.items()
        for r in group_users(df).collect()
    }

    variants = sorted({v for _, v in vectors[SERVED] if v is not None})
    out: list[FeedbackRow] = []
    for cycle in cycles:
        for variant in [*variants, None]:
            key = (cycle.index, variant)
            for kind in KINDS:
                counts = vectors[kind].get(key)
                if counts is None:
                    continue
                measured = exposure(counts, popularity, head)
                share = None
                if kind == WATCHED and measured.slots:
                    share = recommended[kind].get(key, 0) / measured.slots
                out.append(
                    FeedbackRow(
                        cycle=cycle.index,
                        model_version=cycle.model_version,
                        start=cycle.start,
                        end=cycle.end,
                        group=variant if variant is not None else ALL_USERS,
                        kind=kind,
                        n=measured.slots,
                        users=users.get((kind, cycle.index, variant), 0),
                        coverage=measured.coverage,
                        gini=measured.gini,
                        long_tail_share=measured.long_tail_share,
                        avg_popularity=measured.avg_popularity,
                        recommended_share=share,
                    )
                )
    return FeedbackAudit(
        experiment=experiment,
        cycles=cycles,
        rows=out,
        reference_users=int(reference_users),
        catalog_size=size,
        head_size=int(head.sum()),
        popularity=popularity,
        catalog=catalog,
    )
