"""The background refresh: speed views every second, new batch views swapped in atomically.

Threads build a new :class:`~flixlake.serving.recommender.ServingState` off the request path and
install it with a single reference assignment, so a request never waits for a load.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from flixlake.config import ServingConfig
from flixlake.lake.registry import CURRENT, EXPLORE, PREVIOUS, resolve_model_refs
from flixlake.lake.store import Lake
from flixlake.serving.monitoring import ServingMetrics
from flixlake.serving.recommender import NO_MODEL, Recommender
from flixlake.serving.views import (
    ACTIVITY_VIEW,
    BATCH_VIEW,
    MOVIES_TABLE,
    TRENDING_VIEW,
    BatchView,
    SpeedActivity,
    TableWatcher,
    activity_from_table,
    load_batch_view,
    load_catalog,
    newest_update,
    read_view,
    trending_order,
)

log = logging.getLogger(__name__)
MODELS_TABLE = "models"
_LOAD_RETRY_SECONDS = 60.0


@dataclass
class ViewStatus:
    """What the refresher knows about one view (for /health and the metrics)."""

    available: bool = False
    version: int | None = None
    last_ok: float | None = None  # epoch seconds of the last successful check
    newest_update: float | None = None  # newest updated_at written by the speed layer
    error: str | None = None

    def age(self, now: float) -> float:
        return now - self.last_ok if self.last_ok is not None else -1.0

    def staleness(self, now: float) -> float:
        return now - self.newest_update if self.newest_update is not None else -1.0


class ViewRefresher:
    """Two daemon threads: speed views every ``speed_refresh_seconds``, the registry every
    ``model_poll_seconds`` (loading new batch views off the request path, then swapping)."""

    def __init__(
        self,
        lake: Lake,
        config: ServingConfig,
        recommender: Recommender,
        metrics: ServingMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lake = lake
        self.config = config
        self.recommender = recommender
        self.metrics = metrics
        self.clock = clock
        self.status: dict[str, ViewStatus] = {
            MOVIES_TABLE: ViewStatus(),
            BATCH_VIEW: ViewStatus(),
            ACTIVITY_VIEW: ViewStatus(),
            TRENDING_VIEW: ViewStatus(),
        }
        self._watchers = {
            name: TableWatcher(lake, name)
            for name in (MOVIES_TABLE, MODELS_TABLE, ACTIVITY_VIEW, TRENDING_VIEW)
        }
        self._stop = threading.Event()
        self._catalog_checked = threading.Event()
        self._models_checked = threading.Event()
        self._speed_checked = threading.Event()
        self._threads: list[threading.Thread] = []
        self._failed_loads: dict[str, float] = {}  # model version -> epoch of the failure
        self._warned: set[str] = set()
        for name in self.status:
            metrics.watch(metrics.view_age, name, self._age_of(name))
            metrics.watch(metrics.view_available, name, self._available_of(name))
        for name in (ACTIVITY_VIEW, TRENDING_VIEW):
            metrics.watch(metrics.speed_staleness, name, self._staleness_of(name))
        self._publish_model_gauges()

    def _age_of(self, name: str) -> Callable[[], float]:
        return lambda: self.status[name].age(self.clock())

    def _available_of(self, name: str) -> Callable[[], float]:
        return lambda: 1.0 if self.status[name].available else 0.0

    def _staleness_of(self, name: str) -> Callable[[], float]:
        return lambda: self.status[name].staleness(self.clock())

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        for target, name in (
            (self._speed_loop, "speed-refresh"),
            (self._model_loop, "model-loader"),
        ):
            thread = threading.Thread(target=target, name=f"flixlake-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def wait_catalog(self, timeout: float) -> bool:
        """Block until the catalog was read once (or ``timeout``); True when it was."""
        return self._catalog_checked.wait(timeout)

    def wait_ready(self, timeout: float) -> bool:
        """Block until the first registry check and speed refresh finished (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        ok = self._models_checked.wait(timeout)
        return ok and self._speed_checked.wait(max(0.0, deadline - time.monotonic()))

    def _speed_loop(self) -> None:
        # speed views are looked up in the catalog: read them once it is there
        while not self._catalog_checked.wait(0.1):
            if self._stop.is_set():
                return
        while not self._stop.is_set():
            started = time.monotonic()
            self.refresh_speed()
            self._speed_checked.set()
            self._stop.wait(
                max(0.0, self.config.speed_refresh_seconds - (time.monotonic() - started))
            )

    def _model_loop(self) -> None:
        while not self._stop.is_set():
            self.refresh_catalog()
            self._catalog_checked.set()
            self.refresh_models()
            self._models_checked.set()
            self._stop.wait(self.config.model_poll_seconds)

    # -- the catalog ------------------------------------------------------------------------------
    def refresh_catalog(self) -> None:
        """Add new rows of the ``movies`` table; speed views are then re-read against it."""
        before = len(self.recommender.catalog)
        static = self._read_view(
            MOVIES_TABLE,
            self.clock(),
            lambda table, _: load_catalog(self.lake, self.recommender.catalog, table),
        )
        if static is None:
            return
        self.recommender.install_catalog(static)
        if self.recommender.catalog.refused:
            self._degraded(
                "catalog_full",
                f"the catalog holds serving.max_catalog_movies="
                f"{self.recommender.catalog.capacity} movies; newer ones are not served",
            )
        if len(self.recommender.catalog) > before:
            for name in (ACTIVITY_VIEW, TRENDING_VIEW):  # ids that were unknown may be known now
                self._watchers[name].done(None)

    # -- speed views ----------------------------------------------------------------------------
    def refresh_speed(self) -> None:
        """Re-read each speed view whose Delta version moved; keep the old copy on errors."""
        now = self.clock()
        activity = self._read_view(ACTIVITY_VIEW, now, self._read_activity)
        trending = self._read_view(TRENDING_VIEW, now, self._read_trending)
        if activity is not None or trending is not None:
            self.recommender.install_speed(activity, trending)

    def _read_view(self, name: str, now: float, read: Callable[[Any, int], Any]) -> Any:
        status = self.status[name]
        try:
            table = self._watchers[name].changed()
            if table is None:
                if self._watchers[name].exists():
                    status.last_ok = now
                    status.error = None
                else:
                    self._degraded(name, f"{name} does not exist yet; serving without it")
                return None
            version = table.version()
            result = read(table, version)
            self._watchers[name].done(version)
        except Exception as exc:
            self.metrics.refresh_errors.labels(name).inc()
            status.error = f"{type(exc).__name__}: {exc}"
            self._degraded(name, f"reading {name} failed, keeping the last copy: {status.error}")
            return None
        status.available = True
        status.version = version
        status.last_ok = now
        status.error = None
        self._recovered(name)
        return result

    def _read_activity(self, table: Any, version: int) -> SpeedActivity:
        data = read_view(
            self.lake,
            ACTIVITY_VIEW,
            table,
            [
                "user_id",
                "watched_movies",
                "rated_movies",
                "last_seen",
                "model_version",
                "updated_at",
            ],
        )
        activity = activity_from_table(
            data,
            self.recommender.catalog,
            version,
            max_users=self.config.max_activity_users,
            max_seen=self.config.max_seen_per_user,
        )
        self.status[ACTIVITY_VIEW].newest_update = activity.newest_update
        return activity

    def _read_trending(self, table: Any, version: int) -> np.ndarray:
        data = read_view(
            self.lake,
            TRENDING_VIEW,
            table,
            ["window_seconds", "movie_id", "watchers", "updated_at"],
        )
        self.status[TRENDING_VIEW].newest_update = newest_update(data)
        return trending_order(data, self.recommender.catalog, self.config.fallback_candidates)

    # -- batch views ----------------------------------------------------------------------------
    def refresh_models(self) -> None:
        """Resolve each variant's model; load missing batch views, then swap them in at once."""
        status = self.status[BATCH_VIEW]
        try:
            models = self._watchers[MODELS_TABLE].changed()
            changed = models is not None
            loaded = self.recommender.loaded_views
            wanted = self.recommender.state.model_versions
            retry_due = any(
                self.clock() - failed >= _LOAD_RETRY_SECONDS
                for failed in self._failed_loads.values()
            )
            if not changed and not retry_due and self._models_checked.is_set():
                status.last_ok = self.clock()
                return
            resolved = self._resolve_models()
            for version in [v for v in self._failed_loads if v not in resolved]:
                del self._failed_loads[version]  # no longer wanted: stop retrying it
            views: dict[str, BatchView] = {}
            for version in dict.fromkeys(m for m in resolved if m is not None):
                view = loaded.get(version) or self._load(version)
                if view is not None:
                    views[version] = view
            if models is not None:
                self._watchers[MODELS_TABLE].done(models.version())
                status.version = models.version()
        except Exception as exc:
            self.metrics.refresh_errors.labels(BATCH_VIEW).inc()
            status.error = f"{type(exc).__name__}: {exc}"
            self._degraded(BATCH_VIEW, f"checking the registry failed: {status.error}")
            return
        status.last_ok = self.clock()
        serving = tuple(
            EXPLORE if v.explores else m if m in views else NO_MODEL
            for v, m in zip(self.recommender.experiment.variants, resolved, strict=True)
        )
        if views != loaded or serving != wanted:
            state = self.recommender.install_views(resolved, views)
            gc.freeze()  # the loaded objects never need scanning again: shorter GC pauses
            self.metrics.swaps.inc()
            self._publish_model_gauges()
            log.info(
                "serving models %s",
                dict(zip(self._variant_names(), state.model_versions, strict=True)),
            )
        status.available = bool(views)
        status.error = None if views else "no published model with a batch view"
        if views:
            self._recovered(BATCH_VIEW)
        else:
            self._degraded(
                BATCH_VIEW, "no published batch view; answering with trending/popular movies"
            )

    def _variant_names(self) -> list[str]:
        return [v.name for v in self.recommender.experiment.variants]

    def _resolve_models(self) -> tuple[str | None, ...]:
        """Each variant's model version; None when it has none (yet), or explores (no model)."""
        refs = [v.model for v in self.recommender.experiment.variants]
        named = {r for r in refs if r in (CURRENT, PREVIOUS)}  # the others are model versions
        rows = {}
        if named and self.lake.exists(MODELS_TABLE):
            rows = resolve_model_refs(self.lake, named)
        versions = {ref: row["model_version"] if row else None for ref, row in rows.items()}
        return tuple(None if r == EXPLORE else versions.get(r) if r in named else r for r in refs)

    def _load(self, version: str) -> BatchView | None:
        failed_at = self._failed_loads.get(version)
        if failed_at is not None and self.clock() - failed_at < _LOAD_RETRY_SECONDS:
            return None
        try:
            view = load_batch_view(
                self.lake,
                version,
                self.recommender.catalog,
                width=self.config.max_per_user,
                popular_depth=self.config.results,
                popular_size=self.config.fallback_candidates,
            )
        except Exception as exc:
            self._failed_loads[version] = self.clock()
            self.metrics.view_loads.labels("failed").inc()
            log.exception(
                "loading the batch view of %s failed; retrying in %.0fs",
                version,
                _LOAD_RETRY_SECONDS,
            )
            self.status[BATCH_VIEW].error = f"load {version}: {type(exc).__name__}: {exc}"
            return None
        if view is None:
            self._failed_loads[version] = self.clock()  # look again later: it may be written yet
            self.metrics.view_loads.labels("empty").inc()
            log.warning(
                "model %s has no rows in %s; its variants get fallbacks", version, BATCH_VIEW
            )
            return None
        self._failed_loads.pop(version, None)
        self.metrics.view_loads.labels("loaded").inc()
        self.metrics.view_load_seconds.set(view.load_seconds)
        return view

    def _publish_model_gauges(self) -> None:
        state = self.recommender.state
        self.metrics.model.clear()
        for variant, version in zip(self._variant_names(), state.model_versions, strict=True):
            self.metrics.model.labels(variant, version).set(1)
        self.metrics.loaded_users.clear()
        for view in state.views:
            if view is not None:
                self.metrics.loaded_users.labels(view.model_version).set(view.n_users)

    # -- logging state changes once ------------------------------------------------------------
    def _degraded(self, name: str, message: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            log.warning(message)

    def _recovered(self, name: str) -> None:
        if name in self._warned:
            self._warned.discard(name)
            log.info("%s is available again", name)

    # -- /health ----------------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, list[str]]:
        """Ready to take traffic: every variant's batch view loaded (exploration variants have
        none) and the speed views read lately. The reasons say what is missing, without internals (no addresses, no errors)."""
        now = self.clock()
        state = self.recommender.state
        reasons = []
        if len(self.recommender.catalog) == 0:
            reasons.append("no movie catalog read yet")
        missing = [
            v.name
            for v, view in zip(state.experiment.variants, state.views, strict=True)
            if not view and not v.explores  # exploration needs the catalog only
        ]
        if missing:
            reasons.append(f"no batch view loaded for variant(s) {', '.join(missing)}")
        limit = self.config.ready_max_view_age_seconds
        for name in (ACTIVITY_VIEW, TRENDING_VIEW):
            status = self.status[name]
            if not status.available:
                reasons.append(f"speed view {name} not read yet")
            elif status.age(now) > limit:
                reasons.append(
                    f"speed view {name} not confirmed current for {status.age(now):.0f}s"
                )
        return not reasons, reasons

    def health(self) -> dict[str, Any]:
        """Model versions, loaded users and view ages as JSON-ready data (no internals: no
        addresses, host names or error text; those go to the log)."""
        now = self.clock()
        state = self.recommender.state
        variants = {
            v.name: {"model": v.model, "model_version": m, "percent": v.percent}
            for v, m in zip(state.experiment.variants, state.model_versions, strict=True)
        }
        loaded = {
            view.model_version: {"users": view.n_users, "age_seconds": round(now - view.loaded_at)}
            for view in state.views
            if view is not None
        }
        views: dict[str, dict[str, Any]] = {
            name: {"available": s.available, "age_seconds": round(s.age(now), 1)}
            for name, s in self.status.items()
        }
        for name in (ACTIVITY_VIEW, TRENDING_VIEW):
            staleness = self.status[name].staleness(now)
            views[name]["staleness_seconds"] = round(staleness, 1) if staleness >= 0 else None
        views[ACTIVITY_VIEW]["users"] = state.activity.n_users
        views[TRENDING_VIEW]["movies"] = int(state.trending.shape[0])
        ready, reasons = self.readiness()
        return {
            "status": "ok" if ready else "degraded",
            "reasons": reasons,
            "experiment": state.experiment.name,
            "variants": variants,
            "batch_views": loaded,
            "views": views,
            "catalog_movies": len(self.recommender.catalog),
        }
