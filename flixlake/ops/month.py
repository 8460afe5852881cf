"""A month of the lake in compressed time: the stream, a daily batch and the daily maintenance.

Each simulated day lasts ``day_seconds`` of wall time (at least: a day whose work takes longer
lasts longer). During day *d*:

* **the stream**, in a thread: day *d*'s synthetic log lines (:func:`flixlake.sim.generate`)
  go through the speed layer's own micro-batch processor (:class:`~flixlake.streaming.events.SpeedLayer`:
  bronze and quarantine exactly once with app transactions, MERGEs of the user views, the
  trending overwrite, its own compaction of today's files) and its served-answer landing
  (:class:`~flixlake.streaming.served.ServedLanding`), ``micro_batches`` commits a day -- no
  Kafka: the rows Spark's Kafka source would hand a micro-batch, as a DataFrame;
* **the maintenance** for *d - 1* (:func:`flixlake.lake.lifecycle.run_maintenance`), at the
  same time as the stream, as the 01:30 DAG runs beside the live speed layer;
* **a daily batch** for *d - 1*, after it: with ``real=True`` the real pipeline
  (:func:`flixlake.batch.pipeline.run_batch`, what ``flixlake batch`` runs: incremental silver,
  quality gate, attack detection, Spark ALS, evaluation against the baselines, register, the
  publish gate and the batch view), in-process with the month's SparkSession, from the day the
  history covers the evaluation windows (:func:`warmup_days`); otherwise the jobs' write pattern
  through delta-rs (:func:`shaped_batch`: the day's silver partition replaced and its ratings
  merged, quality rows, a registered and published model with factor files under
  ``<artifacts>/runs/<d-1>/model``, evaluation rows, its own ``batch_recommendations``
  partition, online-evaluation rows), quick enough for the marked test.

Retention is compressed with the days (:func:`compressed_lifecycle`): "2 days" of deleted-file
retention is ``2 * day_seconds``. :func:`simulate_month` measures every table after each day.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession

from flixlake.batch.errors import GateFailedError
from flixlake.batch.pipeline import run_batch
from flixlake.config import Settings
from flixlake.lake.lifecycle import ARTIFACTS, Footprint, folder_footprint, footprint
from flixlake.lake.lifecycle import run_maintenance as maintain_lake
from flixlake.lake.registry import PUBLISHED, upsert_model
from flixlake.lake.store import Lake
from flixlake.lake.tables import ALL_TABLES
from flixlake.sim.generate import generate_history
from flixlake.streaming.events import SpeedLayer
from flixlake.streaming.served import ServedLanding

TOPIC = "movielog"
SERVED_TOPIC = "served_recommendations"
RECORDS = pa.schema(
    [
        ("key", pa.binary()),
        ("value", pa.binary()),
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("timestampType", pa.int32()),
    ]
)


def compressed_lifecycle(
    day_seconds: float, file_days: int = 2, log_days: int = 3
) -> dict[str, Any]:
    """``lifecycle`` overrides with the retention counted in simulated days (floor 1 s)."""
    files = f"{max(1, round(file_days * day_seconds))}s"
    logs = f"{max(1, round(file_days * day_seconds), round(log_days * day_seconds))}s"
    retention = {"deleted_file_retention": files, "log_retention": logs}
    return {
        "min_retention": "1s",
        **retention,
        "keep_run_days": 2,
        # every table: the per-table overrides of the config are wall-clock hours
        "tables": dict.fromkeys(ALL_TABLES, retention),
    }


@dataclass
class DayReport:
    day: int
    date: dt.date
    seconds: float
    lines: int
    stream_error: str | None = None
    batch_error: str | None = None
    maintenance_error: str | None = None
    model_version: str | None = None
    batch_note: str | None = None  # e.g. the real batch still warming up, a gate's refusal
    sizes: dict[str, Footprint] = field(default_factory=dict)

    @property
    def green(self) -> bool:
        return not (self.stream_error or self.batch_error or self.maintenance_error)


# -- the stream ---------------------------------------------------------------------------------
def _records(
    spark: SparkSession, topic: str, values: list[bytes], first_offset: int, at: dt.datetime
) -> DataFrame:
    """One micro-batch as Spark's Kafka source gives it to the processors."""
    n = len(values)
    return spark.createDataFrame(
        pa.Table.from_pydict(
            {
                "key": [None] * n,
                "value": values,
                "topic": [topic] * n,
                "partition": [0] * n,
                "offset": list(range(first_offset, first_offset + n)),
                "timestamp": [at] * n,
                "timestampType": [0] * n,
            },
            schema=RECORDS,
        )
    )


def served_values(lines: list[bytes], model_version: str | None) -> list[bytes]:
    """The service's served records for the day's ``recommendation request`` lines."""
    out = []
    for line in lines:
        text = line.decode("utf-8", errors="replace")
        parts = text.split(",", 2)
        if len(parts) < 3 or "recommendation request" not in parts[2]:
            continue
        try:
            user, at = int(parts[1]), dt.datetime.fromisoformat(parts[0])
        except ValueError:
            continue  # the generator's bad lines
        record = {
            "request_id": f"{parts[0]}-{user}",
            "user_id": user,
            "time": at.isoformat(),
            "variant": "control",
            "model_version": model_version or "",
            "items": ["m1", "m2"],
            "status": 200,
            "latency_ms": 12.0,
            "server": "month",
            "answer_source": "batch" if model_version else "fallback",
        }
        out.append(json.dumps(record).encode())
    return out


class Stream:
    """The speed layer's two processors, fed a day's lines in micro-batches."""

    def __init__(
        self, spark: SparkSession, lake: Lake, settings: Settings, query_name: str = "month"
    ) -> None:
        self.spark = spark
        self.events = SpeedLayer(lake, settings.streaming, TOPIC, query_name=query_name)
        self.served = ServedLanding(lake, settings.streaming, SERVED_TOPIC, query_name)
        self.batch_id = 0
        self.offsets = {TOPIC: 0, SERVED_TOPIC: 0}

    def play_day(self, lines: list[bytes], micro_batches: int, model: str | None) -> None:
        served = served_values(lines, model)
        chunk, served_chunk = -(-len(lines) // micro_batches), -(-len(served) // micro_batches)
        for i in range(micro_batches):
            now = dt.datetime.now(dt.UTC)
            part = lines[i * chunk : (i + 1) * chunk]
            batch = _records(self.spark, TOPIC, part, self.offsets[TOPIC], now)
            self.events.process(batch, self.batch_id)
            self.offsets[TOPIC] += len(part)
            answers = served[i * served_chunk : (i + 1) * served_chunk]
            if answers:
                served_batch = _records(
                    self.spark, SERVED_TOPIC, answers, self.offsets[SERVED_TOPIC], now
                )
                self.served.process(served_batch, self.batch_id)
                self.offsets[SERVED_TOPIC] += len(answers)
            self.batch_id += 1


# -- the daily batch (its write pattern, without Spark) -----------------------------------------
_SILVER_WATCH = """
SELECT user_id, movie_id,
       CAST(dense_rank() OVER (ORDER BY movie_id) - 1 AS INT) AS movie_idx,
       CAST(count(DISTINCT minute) AS INT) AS minutes_watched, CAST(max(minute) AS INT) AS max_minute,
       min(event_time) AS first_time, max(event_time) AS last_time, event_date
FROM bronze_events
WHERE parse_status = 'ok' AND event_type = 'watch' AND event_date = '{day}'
GROUP BY user_id, movie_id, event_date
"""
_SILVER_RATINGS = """
SELECT user_id, movie_id, CAST(0 AS INT) AS movie_idx, CAST(max(rating) AS INT) AS rating,
       max(event_time) AS rated_at
FROM bronze_events
WHERE parse_status = 'ok' AND event_type = 'rate' AND event_date = '{day}'
GROUP BY user_id, movie_id
"""
_RECO = """
SELECT event_time, user_id, reco_server AS server, reco_status AS status, reco_results AS results,
       CAST(coalesce(array_length(reco_results), 0) AS INT) AS n_results,
       coalesce(reco_response_ms, 0.0) AS response_ms, event_date
FROM bronze_events
WHERE parse_status = 'ok' AND event_type = 'reco' AND event_date = '{day}'
"""


def _factor_file(path: Path, ids: np.ndarray, rank: int, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    features = rng.normal(size=(len(ids), rank)).astype(np.float32)
    pq.write_table(pa.table({"id": ids.astype(np.int32), "features": list(features)}), str(path))


def shaped_batch(lake: Lake, settings: Settings, run_date: dt.date, top_n: int = 20) -> str:
    """What a day's batch run commits and writes, through delta-rs; returns the model version."""
    day = run_date.isoformat()
    sessions = lake.sql(_SILVER_WATCH.format(day=day))
    # silver is incremental: the day's partition replaced, its ratings merged
    lake.replace_where("watch_sessions", sessions, f"event_date = '{day}'")
    lake.upsert("ratings", lake.sql(_SILVER_RATINGS.format(day=day)))
    lake.replace_where("reco_requests", lake.sql(_RECO.format(day=day)), f"event_date = '{day}'")
    movies = pc.unique(sessions["movie_id"]).sort()
    lake.upsert(
        "movies",
        pa.table(
            {
                "movie_idx": pa.array(range(len(movies)), pa.int32()),
                "movie_id": movies,
                "title": movies,
                "year": pa.nulls(len(movies), pa.int32()),
                "genres": pa.nulls(len(movies), pa.list_(pa.string())),
                "first_seen": pa.nulls(len(movies), pa.date32()),
            }
        ),
    )
    now = dt.datetime.now(dt.UTC)
    lake.upsert(
        "quality_reports",
        pa.Table.from_pylist(
            [
                {
                    "run_date": run_date,
                    "table_name": "bronze_events",
                    "check_name": check,
                    "passed": True,
                    "observed": 0.0,
                    "threshold": 0.05,
                    "details": None,
                    "checked_at": now,
                }
                for check in ("null_fraction", "duplicate_fraction", "volume_ratio")
            ],
            schema=ALL_TABLES["quality_reports"].schema,
        ),
    )
    version = f"als-{run_date:%Y%m%d}-month"
    model_dir = settings.artifacts_root / "runs" / day / "model"
    rng = np.random.default_rng(run_date.toordinal())
    users = np.unique(sessions["user_id"].to_numpy())
    for kind in ("eval", "final"):
        _factor_file(model_dir / kind / "user" / "part-0.parquet", users, 8, rng)
        _factor_file(model_dir / kind / "item" / "part-0.parquet", np.arange(len(movies)), 8, rng)
    (model_dir.parent / "train.json").write_text(json.dumps({"model_version": version}))
    upsert_model(
        lake,
        {
            "model_version": version,
            "run_date": run_date,
            "algorithm": "als",
            "params": {"rank": 8},
            "metrics": {"als": {"ndcg": 0.2}},
            "input_versions": {"watch_sessions": lake.version("watch_sessions")},
            "git_commit": None,
            "library_versions": {},
            "artifact_path": str(model_dir),
            "status": PUBLISHED,
            "status_reason": "month simulation",
            "registered_at": now,
            "published_at": now,
        },
    )
    lake.upsert(
        "model_evaluations",
        pa.Table.from_pylist(
            [
                {
                    "model_version": version,
                    "run_date": run_date,
                    "recommender": recommender,
                    "segment": "all",
                    "metric": "ndcg",
                    "value": 0.2,
                    "n_users": len(users),
                }
                for recommender in ("als", "popularity", "itemknn", "ease")
            ],
            schema=ALL_TABLES["model_evaluations"].schema,
        ),
    )
    popular = (
        sessions.group_by("movie_id")
        .aggregate([("user_id", "count")])
        .sort_by([("user_id_count", "descending"), ("movie_id", "ascending")])["movie_id"]
    )[:top_n].to_pylist()
    lake.replace_where(
        "batch_recommendations",
        pa.table(
            {
                "user_id": np.repeat(users, len(popular)),
                "rank": pa.array(np.tile(np.arange(1, len(popular) + 1), len(users)), pa.int32()),
                "movie_id": popular * len(users),
                "score": pa.array(np.zeros(len(users) * len(popular)), pa.float32()),
                "model_version": [version] * (len(users) * len(popular)),
            }
        ),
        f"model_version = '{version}'",
    )
    served_day = run_date
    lake.replace_where(
        "online_evaluations",
        pa.Table.from_pylist(
            [
                {
                    "served_hour": dt.datetime.combine(served_day, dt.time(h), tzinfo=dt.UTC),
                    "experiment": "default",
                    "model_version": version,
                    "variant": "control",
                    "user_id": int(u),
                    "served": 1,
                    "converted": 0,
                    "window_seconds": 3600,
                    "computed_at": now,
                    "served_date": served_day,
                }
                for h in range(0, 24, 6)
                for u in users[:10]
            ],
            schema=ALL_TABLES["online_evaluations"].schema,
        ),
        f"served_date = '{day}'",
    )
    return version


# -- the real daily batch -----------------------------------------------------------------------
def warmup_days(settings: Settings) -> int:
    """Days of history the real batch needs first: its validation and evaluation windows, and a
    day to train on before them."""
    return settings.batch.eval_days + settings.batch.validation_days + 1


def real_batch(
    spark: SparkSession, lake: Lake, settings: Settings, run_date: dt.date
) -> tuple[str | None, str | None]:
    """``flixlake batch`` for the run date in this session: (the served model, a note).

    A publish gate that refuses the new model (not better than the incumbent) keeps the
    incumbent serving: a defined outcome of a healthy day, returned as the note, not raised.
    """
    current: list[str] = []
    try:
        results = run_batch(
            spark, lake, settings, run_date, on_start=lambda step: current.append(step.name)
        )
    except GateFailedError as exc:
        if current[-1:] != ["publish"] or "quality gate" in str(exc):
            raise  # bad data or a screening refusal: the day is red
        return None, f"publish gate kept the incumbent: {exc}"
    published = {r.step.name: r.summary for r in results}.get("publish", {})
    return str(published.get("model_version") or "") or None, None


# -- the month ----------------------------------------------------------------------------------
def _day_lines(data: Path, date: dt.date) -> list[bytes]:
    path = data / f"events-{date.isoformat()}.log"
    return [line for line in path.read_bytes().split(b"\n") if line]


def measure(lake: Lake, settings: Settings) -> dict[str, Footprint]:
    """Every existing table's footprint, and the artifacts folder's."""
    sizes = {name: footprint(lake, name) for name in ALL_TABLES if lake.exists(name)}
    sizes[ARTIFACTS] = folder_footprint(settings.artifacts_root)
    return sizes


def simulate_month(
    spark: SparkSession,
    lake: Lake,
    settings: Settings,
    data: Path,
    days: int,
    *,
    users: int = 300,
    movies: int = 120,
    seed: int = 7,
    micro_batches: int = 48,
    day_seconds: float = 10.0,
    maintain: bool = True,
    real: bool = False,
    on_day: Callable[[DayReport], None] | None = None,
) -> list[DayReport]:
    """Run ``days`` simulated days (see the module docstring); one report per day.

    ``maintain=False`` is the baseline: no daily maintenance, only what the stream does itself.
    ``real=True`` runs the real batch pipeline each day instead of :func:`shaped_batch`.
    """
    summary = generate_history(data, n_users=users, n_movies=movies, days=days, seed=seed)
    first = dt.date.fromisoformat(str(summary["first_date"]))
    stream = Stream(spark, lake, settings)
    model: str | None = None
    reports = []
    for index in range(days):
        started = time.monotonic()
        date = first + dt.timedelta(days=index)
        lines = _day_lines(data, date)
        report = DayReport(index + 1, date, 0.0, len(lines))
        errors: dict[str, str] = {}

        def play(
            lines: list[bytes] = lines, model: str | None = model, errors: dict[str, str] = errors
        ) -> None:
            try:
                stream.play_day(lines, micro_batches, model)
            except Exception as exc:  # the day is red; the report says why
                errors["stream"] = f"{type(exc).__name__}: {exc}"

        player = threading.Thread(target=play, name=f"stream-{date}")
        player.start()
        if index > 0:
            yesterday = date - dt.timedelta(days=1)
            try:
                if maintain:
                    maintain_lake(lake, settings, yesterday)
            except Exception as exc:
                report.maintenance_error = f"{type(exc).__name__}: {exc}"
            try:
                if not real:
                    model = report.model_version = shaped_batch(lake, settings, yesterday)
                elif index < warmup_days(settings):
                    report.batch_note = f"real batch from day {warmup_days(settings) + 1}"
                else:
                    served, report.batch_note = real_batch(spark, lake, settings, yesterday)
                    model = report.model_version = served or model
            except Exception as exc:
                report.batch_error = f"{type(exc).__name__}: {exc}"
        player.join()
        report.stream_error = errors.get("stream")
        report.sizes = measure(lake, settings)
        time.sleep(max(0.0, day_seconds - (time.monotonic() - started)))
        report.seconds = time.monotonic() - started
        reports.append(report)
        if on_day is not None:
            on_day(report)
    return reports
