"""Account profiles for attack detection, as pure DataFrame transforms over the silver tables.

Features follow the shilling-attack literature (Chirita et al. 2005, "Preventing shilling
attacks in online recommender systems"; Burke et al. 2006, "Classification features for attack
detection in collaborative recommender systems"), adapted to implicit feedback:

* ``rdma`` — rating deviation from mean agreement: the mean over the account's ratings of
  ``|r - movie mean| / ratings of the movie``; ``wdma`` divides by the count squared (weighs
  rarely rated movies up); ``mean_deviation`` is the plain mean of ``|r - movie mean|``;
* ``extreme_share`` — share of the account's ratings that are 1 or 5 stars;
* ``degsim`` — degree of similarity: the mean of the account's ``k`` highest similarities to
  other accounts, a similarity being shared (movie, stars) pairs over ``sqrt(n_u * n_v)``
  (the detect step computes it over the lookback's ratings);
* ``ratings_per_active_hour`` — volume against the time between first and last event;
  ``account_age_days`` at the run date;
* ``burst_ratings`` — ratings the account gave, as a new account, inside a *rating burst*:
  a movie that at least ``burst_min_accounts`` new accounts rated with the same stars within one
  sliding window, making up at least ``burst_min_share`` of the movie's raters in it;
* ``max_requests_per_hour`` — recommendation requests in the account's busiest hour.

Every function takes DataFrames and returns one; nothing here reads, writes or collects.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

ACTIVITY_COLUMNS = (
    "user_id",
    "first_seen",
    "last_seen",
    "n_watched",
    "minutes_watched",
    "n_ratings",
    "n_requests",
)
BURST_COLUMNS = (
    "movie_idx",
    "rating",
    "window",
    "window_start",
    "window_end",
    "new_accounts",
    "raters",
)


def account_activity_df(
    watch_sessions_df: DataFrame, ratings_df: DataFrame, reco_requests_df: DataFrame
) -> DataFrame:
    """Per account: first and last event, distinct movies watched, minutes, ratings, requests."""
    watched = watch_sessions_df.groupBy("user_id").agg(
        F.min("first_time").alias("_w_first"),
        F.max("last_time").alias("_w_last"),
        F.count_distinct("movie_idx").alias("n_watched"),
        F.sum("minutes_watched").alias("minutes_watched"),
    )
    rated = ratings_df.groupBy("user_id").agg(
        F.min("rated_at").alias("_r_first"),
        F.max("rated_at").alias("_r_last"),
        F.count(F.lit(1)).alias("n_ratings"),
    )
    asked = reco_requests_df.groupBy("user_id").agg(
        F.min("event_time").alias("_q_first"),
        F.max("event_time").alias("_q_last"),
        F.count(F.lit(1)).alias("n_requests"),
    )
    joined = watched.join(rated, "user_id", "full").join(asked, "user_id", "full")
    return joined.select(
        F.col("user_id").cast("long").alias("user_id"),
        F.least("_w_first", "_r_first", "_q_first").alias("first_seen"),
        F.greatest("_w_last", "_r_last", "_q_last").alias("last_seen"),
        F.coalesce("n_watched", F.lit(0)).cast("long").alias("n_watched"),
        F.coalesce("minutes_watched", F.lit(0)).cast("long").alias("minutes_watched"),
        F.coalesce("n_ratings", F.lit(0)).cast("long").alias("n_ratings"),
        F.coalesce("n_requests", F.lit(0)).cast("long").alias("n_requests"),
    )


def active_accounts_df(activity_df: DataFrame, since: dt.datetime) -> DataFrame:
    """The accounts with an event at or after ``since``: the ones a run scores."""
    return activity_df.where(F.col("last_seen") >= F.lit(since)).select("user_id")


def rating_deviation_df(ratings_df: DataFrame) -> DataFrame:
    """Per account: ``rdma``, ``wdma``, ``mean_deviation``, ``extreme_share``, ``n_ratings``."""
    movies = ratings_df.groupBy("movie_idx").agg(
        F.avg("rating").alias("_mean"), F.count(F.lit(1)).alias("_n")
    )
    deviation = F.abs(F.col("rating") - F.col("_mean"))
    return (
        ratings_df.join(movies, "movie_idx")
        .groupBy("user_id")
        .agg(
            F.avg(deviation / F.col("_n")).alias("rdma"),
            F.avg(deviation / (F.col("_n") * F.col("_n"))).alias("wdma"),
            F.avg(deviation).alias("mean_deviation"),
            F.avg(F.col("rating").isin(1, 5).cast("double")).alias("extreme_share"),
        )
    )


def degree_of_similarity_df(
    ratings_df: DataFrame, accounts_df: DataFrame, neighbours: int, max_per_group: int, seed: int
) -> DataFrame:
    """Per account of ``accounts_df`` with ratings: ``degsim``, mean of its top-k similarities.

    Pairs come from shared (movie, stars); each (movie, stars) keeps at most ``max_per_group``
    raters, the same on every run (hash order), which bounds the self-join on popular movies.
    """
    rated = ratings_df.join(F.broadcast(accounts_df.select("user_id")), "user_id", "left_semi")
    sizes = rated.groupBy("user_id").agg(F.count(F.lit(1)).alias("_n"))
    order = Window.partitionBy("movie_idx", "rating").orderBy(
        F.xxhash64(F.col("user_id"), F.lit(seed)), "user_id"
    )
    kept = (
        rated.select("user_id", "movie_idx", "rating")
        .withColumn("_pos", F.row_number().over(order))
        .where(F.col("_pos") <= max_per_group)
        .drop("_pos")
    )
    a, b = kept.alias("a"), kept.alias("b")
    shared = (
        a.join(
            b,
            (F.col("a.movie_idx") == F.col("b.movie_idx"))
            & (F.col("a.rating") == F.col("b.rating")),
        )
        .where(F.col("a.user_id") < F.col("b.user_id"))
        .groupBy(F.col("a.user_id").alias("u"), F.col("b.user_id").alias("v"))
        .agg(F.count(F.lit(1)).alias("_shared"))
    )
    n_u = sizes.select(F.col("user_id").alias("u"), F.col("_n").alias("_nu"))
    n_v = sizes.select(F.col("user_id").alias("v"), F.col("_n").alias("_nv"))
    similar = shared.join(n_u, "u").join(n_v, "v")
    similar = similar.withColumn("sim", F.col("_shared") / F.sqrt(F.col("_nu") * F.col("_nv")))
    both = similar.select(F.col("u").alias("user_id"), "sim").unionByName(
        similar.select(F.col("v").alias("user_id"), "sim")
    )
    best = Window.partitionBy("user_id").orderBy(F.col("sim").desc())
    top = (
        both.withColumn("_rank", F.row_number().over(best))
        .where(F.col("_rank") <= neighbours)
        .groupBy("user_id")
        .agg((F.sum("sim") / F.lit(float(neighbours))).alias("degsim"))
    )
    return sizes.select("user_id").join(top, "user_id", "left").fillna(0.0, ["degsim"])


def _is_new(event_time: Column, first_seen: Column, new_account_seconds: int) -> Column:
    return (F.unix_timestamp(event_time) - F.unix_timestamp(first_seen)) < new_account_seconds


def rating_bursts_df(
    ratings_df: DataFrame,
    activity_df: DataFrame,
    windows: dict[str, int],
    new_account_seconds: int,
    min_accounts: int,
    min_share: float,
    since: dt.datetime,
) -> DataFrame:
    """Movies that many new accounts rated with the same stars inside one sliding window.

    ``windows`` maps a label to a length in seconds; windows slide by a quarter of their length.
    Returns :data:`BURST_COLUMNS`: the movie, the stars, the window and how many new accounts
    gave those stars out of how many raters the movie had in it.
    """
    rated = (
        ratings_df.where(F.col("rated_at") >= F.lit(since))
        .join(activity_df.select("user_id", "first_seen"), "user_id")
        .withColumn("_new", _is_new(F.col("rated_at"), F.col("first_seen"), new_account_seconds))
    )
    parts = []
    for label, seconds in windows.items():
        slide = max(1, seconds // 4)
        framed = rated.withColumn(
            "_w", F.window("rated_at", f"{seconds} seconds", f"{slide} seconds")
        )
        keys = ["movie_idx", "_w"]
        raters = framed.groupBy(*keys).agg(F.count_distinct("user_id").alias("raters"))
        alike = (
            framed.where(F.col("_new"))
            .groupBy(*keys, "rating")
            .agg(F.count_distinct("user_id").alias("new_accounts"))
        )
        parts.append(
            alike.join(raters, keys)
            .where(
                (F.col("new_accounts") >= min_accounts)
                & (F.col("new_accounts") >= F.lit(min_share) * F.col("raters"))
            )
            .select(
                "movie_idx",
                "rating",
                F.lit(label).alias("window"),
                F.col("_w.start").alias("window_start"),
                F.col("_w.end").alias("window_end"),
                F.col("new_accounts").cast("long").alias("new_accounts"),
                F.col("raters").cast("long").alias("raters"),
            )
        )
    out = parts[0]
    for part in parts[1:]:
        out = out.unionByName(part)
    return out


def burst_accounts_df(
    ratings_df: DataFrame, activity_df: DataFrame, bursts_df: DataFrame, new_account_seconds: int
) -> DataFrame:
    """Per account that rated inside a burst as a new account: how often, and the largest burst.

    Returns ``user_id, burst_ratings, burst_movie_idx, burst_rating, burst_window,
    burst_new_accounts``.
    """
    rated = ratings_df.join(activity_df.select("user_id", "first_seen"), "user_id").where(
        _is_new(F.col("rated_at"), F.col("first_seen"), new_account_seconds)
    )
    hits = rated.alias("r").join(
        F.broadcast(bursts_df.alias("b")),
        (F.col("r.movie_idx") == F.col("b.movie_idx"))
        & (F.col("r.rating") == F.col("b.rating"))
        & (F.col("r.rated_at") >= F.col("b.window_start"))
        & (F.col("r.rated_at") < F.col("b.window_end")),
    )
    largest = F.max_by(
        F.struct(
            F.col("b.movie_idx").alias("movie_idx"),
            F.col("b.rating").alias("rating"),
            F.col("b.window").alias("window"),
            F.col("b.new_accounts").alias("new_accounts"),
        ),
        F.col("b.new_accounts"),
    )
    return (
        hits.groupBy(F.col("r.user_id").alias("user_id"))
        .agg(F.count_distinct("r.movie_idx").alias("burst_ratings"), largest.alias("_b"))
        .select(
            "user_id",
            F.col("burst_ratings").cast("long").alias("burst_ratings"),
            F.col("_b.movie_idx").alias("burst_movie_idx"),
            F.col("_b.rating").alias("burst_rating"),
            F.col("_b.window").alias("burst_window"),
            F.col("_b.new_accounts").alias("burst_new_accounts"),
        )
    )


def request_peaks_df(reco_requests_df: DataFrame, since: dt.datetime) -> DataFrame:
    """Per account: recommendation requests in its busiest hour (windows slide by 15 minutes)."""
    framed = reco_requests_df.where(F.col("event_time") >= F.lit(since)).withColumn(
        "_w", F.window("event_time", "1 hour", "15 minutes")
    )
    return (
        framed.groupBy("user_id", "_w")
        .agg(F.count(F.lit(1)).alias("_n"))
        .groupBy("user_id")
        .agg(F.max("_n").cast("long").alias("max_requests_per_hour"))
    )


def account_profiles_df(
    accounts_df: DataFrame,
    activity_df: DataFrame,
    deviation_df: DataFrame,
    similarity_df: DataFrame,
    burst_accounts: DataFrame,
    request_peaks: DataFrame,
    run_end: dt.datetime,
) -> DataFrame:
    """One row per scored account with every feature (absent signals are 0, not null)."""
    span_hours = (F.unix_timestamp("last_seen") - F.unix_timestamp("first_seen")) / 3600.0
    return (
        accounts_df.select("user_id")
        .join(activity_df, "user_id", "left")
        .join(deviation_df, "user_id", "left")
        .join(similarity_df, "user_id", "left")
        .join(burst_accounts, "user_id", "left")
        .join(request_peaks, "user_id", "left")
        .fillna(
            0,
            [
                "n_watched",
                "minutes_watched",
                "n_ratings",
                "n_requests",
                "rdma",
                "wdma",
                "mean_deviation",
                "extreme_share",
                "degsim",
                "burst_ratings",
                "max_requests_per_hour",
            ],
        )
        .withColumn(
            "account_age_days",
            (F.lit(run_end).cast("long") - F.unix_timestamp("first_seen")) / 86400.0,
        )
        .withColumn("active_hours", F.greatest(span_hours, F.lit(1.0)))
        .withColumn("ratings_per_active_hour", F.col("n_ratings") / F.col("active_hours"))
    )
