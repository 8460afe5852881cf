"""Model staleness and online quality per variant, read from the lake (delta-rs, no Spark).

A :class:`LakeCollector` re-reads ``models`` and ``online_evaluations`` every
``monitoring.lake_poll_seconds`` (both are small) and serves the newest figures at scrape time:

* ``flixlake_model_last_published_timestamp_seconds`` — when the model the service should serve
  was published (the staleness alert: no new model for 4 days);
* ``flixlake_model_current_info{model_version}``, ``flixlake_model_offline_metric{metric}`` — which
  model and its offline metrics from the registry;
* ``flixlake_models{status}`` — models by status (registered, published, rejected);
* ``flixlake_online_watch_through_ratio{experiment,variant,model_version}`` and
  ``..._24h_ratio`` — watch-through of the newest evaluated hour and of the 24 hours up to it
  (served-weighted), with the answers behind each (``flixlake_online_served``,
  ``flixlake_online_served_24h``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from flixlake.contract.logformat import as_utc
from flixlake.lake.registry import current_published_model, model_rows
from flixlake.lake.store import Lake
from flixlake.lake.tables import MODELS, ONLINE_EVALUATIONS

log = logging.getLogger(__name__)
ONLINE_COLUMNS = ["served_hour", "experiment", "model_version", "variant", "served", "converted"]
MAX_SERIES = 200  # online series exported (experiments x variants x model versions)


@dataclass
class LakeFigures:
    """What one read of the lake found."""

    published_at: float | None = None
    model_version: str | None = None
    offline: dict[str, float] = field(default_factory=dict)
    models_by_status: dict[str, int] = field(default_factory=dict)
    newest_hour: float | None = None
    hour: dict[tuple[str, str, str], tuple[int, int]] = field(default_factory=dict)
    day: dict[tuple[str, str, str], tuple[int, int]] = field(default_factory=dict)
    read_at: float | None = None


def _numbers(metrics: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a model's metrics JSON (one level deep), dotted names."""
    out: dict[str, float] = {}
    if isinstance(metrics, str):
        try:
            metrics = json.loads(metrics)
        except ValueError:
            return out
    if not isinstance(metrics, dict):
        return out
    for key, value in metrics.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[f"{prefix}{key}"] = float(value)
        elif isinstance(value, dict) and not prefix:
            out.update(_numbers(value, f"{key}."))
    return out


def read_figures(lake: Lake, now: float) -> LakeFigures:
    """The registry and the online evaluation as figures (missing tables: nothing)."""
    figures = LakeFigures(read_at=now)
    if lake.exists(MODELS.name):
        rows = model_rows(lake)
        for row in rows:
            figures.models_by_status[row["status"]] = (
                figures.models_by_status.get(row["status"], 0) + 1
            )
        current = current_published_model(lake)
        if current is not None:
            figures.model_version = current["model_version"]
            figures.published_at = as_utc(current["published_at"]).timestamp()
            figures.offline = _numbers(current.get("metrics"))
    if lake.exists(ONLINE_EVALUATIONS.name):
        table = lake.read(ONLINE_EVALUATIONS.name, columns=ONLINE_COLUMNS).to_pylist()
        if table:
            newest = max(r["served_hour"] for r in table)
            figures.newest_hour = as_utc(newest).timestamp()
            since = newest - dt.timedelta(hours=24)
            for r in table:
                key = (r["experiment"], r["variant"], r["model_version"])
                if r["served_hour"] == newest:  # one row per user: add them up
                    served, converted = figures.hour.get(key, (0, 0))
                    figures.hour[key] = (served + r["served"], converted + r["converted"])
                if r["served_hour"] > since:
                    served, converted = figures.day.get(key, (0, 0))
                    figures.day[key] = (served + r["served"], converted + r["converted"])
    return figures


class LakeCollector(Collector):
    """Serves the last :class:`LakeFigures`; a thread refreshes them (errors are counted)."""

    def __init__(self, lake: Lake, poll_seconds: float, errors: Counter) -> None:
        self.lake = lake
        self.poll_seconds = poll_seconds
        self.errors = errors
        self.figures = LakeFigures()
        self._logged = False

    def refresh(self, now: float) -> None:
        try:
            self.figures = read_figures(self.lake, now)
            self._logged = False
        except Exception as exc:  # keep serving the last figures; say so once
            self.errors.labels("lake").inc()
            if not self._logged:
                self._logged = True
                log.warning("reading the lake failed, keeping the last figures: %s", exc)

    def run(self, stop: threading.Event, clock: Any) -> None:
        while not stop.is_set():
            self.refresh(clock())
            stop.wait(self.poll_seconds)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        f = self.figures
        published = GaugeMetricFamily(
            "flixlake_model_last_published_timestamp_seconds",
            "When the model the service should serve was published (registry).",
        )
        if f.published_at is not None:
            published.add_metric([], f.published_at)
        yield published
        info = GaugeMetricFamily(
            "flixlake_model_current_info",
            "1 for the newest published model (the one variants on `current` serve).",
            labels=["model_version"],
        )
        if f.model_version is not None:
            info.add_metric([f.model_version], 1.0)
        yield info
        offline = GaugeMetricFamily(
            "flixlake_model_offline_metric",
            "Offline metrics of the newest published model, from its registry row.",
            labels=["model_version", "metric"],
        )
        for name, value in sorted(f.offline.items())[:MAX_SERIES]:
            offline.add_metric([f.model_version or "", name], value)
        yield offline
        models = GaugeMetricFamily(
            "flixlake_models", "Models in the registry by status.", labels=["status"]
        )
        for status, count in sorted(f.models_by_status.items()):
            models.add_metric([status], float(count))
        yield models
        labels = ["experiment", "variant", "model_version"]
        hour_ratio = GaugeMetricFamily(
            "flixlake_online_watch_through_ratio",
            "Watch-through of the newest evaluated served hour (answers followed by a watch of "
            "a recommended movie within the window).",
            labels=labels,
        )
        hour_served = GaugeMetricFamily(
            "flixlake_online_served", "Answers in the newest evaluated served hour.", labels=labels
        )
        day_ratio = GaugeMetricFamily(
            "flixlake_online_watch_through_24h_ratio",
            "Watch-through over the 24 evaluated hours up to the newest (served-weighted).",
            labels=labels,
        )
        day_served = GaugeMetricFamily(
            "flixlake_online_served_24h", "Answers in those 24 hours.", labels=labels
        )
        for source, ratio, served in (
            (f.hour, hour_ratio, hour_served),
            (f.day, day_ratio, day_served),
        ):
            for key, (n, converted) in sorted(source.items())[:MAX_SERIES]:
                served.add_metric(list(key), float(n))
                if n:
                    ratio.add_metric(list(key), converted / n)
        yield from (hour_ratio, hour_served, day_ratio, day_served)
        newest = GaugeMetricFamily(
            "flixlake_online_newest_hour_timestamp_seconds",
            "Start of the newest served hour the online evaluation has computed.",
        )
        if f.newest_hour is not None:
            newest.add_metric([], f.newest_hour)
        yield newest
        read = GaugeMetricFamily(
            "flixlake_exporter_lake_read_timestamp_seconds",
            "When the lake was last read successfully.",
        )
        if f.read_at is not None:
            read.add_metric([], f.read_at)
        yield read
