"""Table lifecycle: retention, compaction, vacuum, log cleanup and pruning, run once a day.

For every table of the registry (:data:`~flixlake.lake.tables.ALL_TABLES`) that exists,
:func:`run_maintenance` does what its :class:`~flixlake.lake.tables.Lifecycle` says, with
delta-rs only (no JVM):

1. checks ``delta.logRetentionDuration`` / ``delta.deletedFileRetentionDuration`` against
   ``lifecycle`` in the config. A table created through :func:`~flixlake.lake.store.lake_from_settings`
   carries them from its first commit, so normally nothing is committed; only a table created
   before, or a changed config, gets one metadata commit (which can fail one concurrent stream
   micro-batch's commit, retried by the stream). delta-spark honours the same two properties, so
   both engines clean up alike;
2. prunes (``batch_recommendations``): drops the partitions of models no longer kept -- the
   ``lifecycle.keep_models`` newest published models, models an experiment variant names and
   any model of the last ``lifecycle.keep_run_days`` days stay, so rollback keeps working;
3. compacts small files (``optimize.compact``; closed day partitions only for tables the
   stream appends to). A compaction commits no ``txn`` action and the snapshot keeps every app
   transaction (checkpoints too), so the stream's exactly-once records survive it;
4. vacuums files removed longer ago than the table's deleted-file retention, never below
   ``lifecycle.min_retention`` (delta-rs refuses a shorter one): a reader on an older snapshot
   still finds its files. ``full`` mode lists the folder, so files another engine's checkpoint
   already forgot are found too;
5. writes a checkpoint and deletes commit files older than the log retention.

The artifacts of models not kept (``<artifacts>/runs/<date>``) and old audit reports
(``<artifacts>/audit/<date>``) go the same way. Each table (and the artifacts) gets one
``maintenance_runs`` row per run: data files, bytes and log length before and after. A step that
fails is recorded with its error, the other tables still run, and the run then raises
:class:`MaintenanceError`.

>>> run_maintenance(Lake("var/lake"), settings, dt.date(2026, 11, 22))   # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import fs as pafs

from flixlake.config import (
    ConfigError,
    Settings,
    delta_interval,
)
from flixlake.lake.registry import PUBLISHED, list_models
from flixlake.lake.store import Lake, recommitting
from flixlake.lake.tables import ALL_TABLES, MAINTENANCE_RUNS, TableSpec

ARTIFACTS = "(artifacts)"  # the maintenance_runs row of the artifacts folder
_COMMIT_FILE = re.compile(r"^\d{20}\.json$")


class MaintenanceError(RuntimeError):
    """At least one table's maintenance failed (its ``maintenance_runs`` row says why)."""


@dataclass(frozen=True)
class Footprint:
    """What a table occupies: data files in its folder (live or not), bytes, log commits."""

    files: int
    bytes: int
    log_files: int
    live_files: int
    version: int | None


interval = delta_interval  # the name the lifecycle's readers know


def retention_properties(settings: Settings, table: str) -> dict[str, str]:
    """The two retention properties a table should carry under this config."""
    return settings.lifecycle.table_properties(table)


def check_table_names(settings: Settings) -> None:
    """``lifecycle.tables`` may only name registered tables (a typo would be silently ignored)."""
    unknown = sorted(set(settings.lifecycle.tables) - set(ALL_TABLES))
    if unknown:
        raise ConfigError(
            f"lifecycle.tables.{unknown[0]}: unknown table; known tables: {sorted(ALL_TABLES)}"
        )


# -- measuring ----------------------------------------------------------------------------------
def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), str(Path(path).resolve())


def _hidden(relative: str) -> bool:
    return any(part.startswith(("_", ".")) for part in relative.split("/"))


def footprint(lake: Lake, name: str) -> Footprint:
    """Files and bytes in a table's folder (the log included in bytes) and its commit files."""
    filesystem, root = _filesystem(lake.path(name))
    files = size = log_files = 0
    for info in filesystem.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        relative = info.path[len(root) :].lstrip("/")
        size += info.size or 0
        if relative.startswith("_delta_log/"):
            log_files += bool(_COMMIT_FILE.match(relative.rsplit("/", 1)[-1]))
        elif not _hidden(relative):
            files += 1
    live = version = None
    if lake.exists(name):
        table = lake.table(name)
        live, version = len(table.file_uris()), table.version()
    return Footprint(files, size, log_files, live or 0, version)


def folder_footprint(path: Path) -> Footprint:
    """Files and bytes under a local folder (the artifacts)."""
    files = [p for p in path.rglob("*") if p.is_file()] if path.exists() else []
    return Footprint(len(files), sum(p.stat().st_size for p in files), 0, len(files), None)


# -- what is kept for rollback ------------------------------------------------------------------
def kept_models(lake: Lake, settings: Settings, run_date: dt.date) -> set[str]:
    """Models whose batch view and artifacts stay: the newest published, named, or recent ones."""
    rows = list_models(lake)
    published = sorted(
        (r for r in rows if r["status"] == PUBLISHED and r["published_at"] is not None),
        key=lambda r: (r["published_at"], r["model_version"]),
        reverse=True,
    )
    keep = {str(r["model_version"]) for r in published[: settings.lifecycle.keep_models]}
    keep |= {
        v.model
        for v in settings.serving.experiment.variants
        if v.model not in {"current", "previous"}
    }
    oldest_kept_day = run_date - dt.timedelta(days=settings.lifecycle.keep_run_days - 1)
    keep |= {str(r["model_version"]) for r in rows if r["run_date"] >= oldest_kept_day}
    return keep


def prune_model_versions(lake: Lake, name: str, keep: set[str], known: set[str]) -> list[str]:
    """Drop the partitions of registered models not kept; unknown partitions are left alone."""
    actions = pa.table(lake.table(name).get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return []
    present = set(pc.unique(actions["partition.model_version"]).to_pylist())
    doomed = sorted((present & known) - keep)
    if doomed:
        quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in doomed)
        recommitting(lambda: lake.table(name).delete(f"model_version IN ({quoted})"))
    return doomed


def _run_folder(model: dict[str, Any], runs_root: Path) -> Path:
    artifact = Path(str(model["artifact_path"]))
    if artifact.parent.parent == runs_root:  # <artifacts>/runs/<date>/model
        return artifact.parent
    return runs_root / str(model["run_date"])


def prune_artifacts(lake: Lake, settings: Settings, run_date: dt.date, keep: set[str]) -> list[str]:
    """Delete run folders (and audit reports) older than ``keep_run_days`` of models not kept."""
    root = settings.artifacts_root
    runs_root = root / "runs"
    kept_folders = {
        _run_folder(m, runs_root) for m in list_models(lake) if m["model_version"] in keep
    }
    oldest_kept_day = run_date - dt.timedelta(days=settings.lifecycle.keep_run_days - 1)
    removed = []
    for parent in (runs_root, root / "audit"):
        for folder in sorted(parent.iterdir()) if parent.is_dir() else []:
            try:
                day = dt.date.fromisoformat(folder.name)
            except ValueError:
                continue  # not a dated folder: not ours to remove
            if folder.is_dir() and day < oldest_kept_day and folder not in kept_folders:
                shutil.rmtree(folder)
                removed.append(f"{parent.name}/{folder.name}")
    return removed


# -- one table ----------------------------------------------------------------------------------
def _set_retention(lake: Lake, name: str, wanted: dict[str, str]) -> None:
    current = lake.table(name).metadata().configuration
    if any(current.get(k) != v for k, v in wanted.items()):
        recommitting(lambda: lake.table(name).alter.set_table_properties(wanted))


def _compact(lake: Lake, spec: TableSpec, settings: Settings, run_date: dt.date) -> int:
    if not spec.lifecycle.compact:
        return 0
    filters = None
    if spec.lifecycle.compact_closed_days:
        filters = [(spec.partition_by[0], "<=", run_date.isoformat())]
    target = settings.lifecycle.compact_target_mb * 1024 * 1024
    metrics = recommitting(
        lambda: lake.table(spec.name).optimize.compact(
            partition_filters=filters, target_size=target
        )
    )
    return int(metrics.get("numFilesRemoved", 0))


def _row(
    run_id: str, run_date: dt.date, name: str, before: Footprint, after: Footprint, started: float
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "run_date": run_date,
        "table_name": name,
        "status": "ok",
        "version_before": before.version,
        "version_after": after.version,
        "files_before": before.files,
        "files_after": after.files,
        "live_files_after": after.live_files,
        "bytes_before": before.bytes,
        "bytes_after": after.bytes,
        "log_files_before": before.log_files,
        "log_files_after": after.log_files,
        "files_compacted": 0,
        "files_vacuumed": 0,
        "pruned": [],
        "details": None,
        "seconds": time.monotonic() - started,
        "started_at": dt.datetime.now(dt.UTC),
    }


def maintain_table(
    lake: Lake,
    spec: TableSpec,
    settings: Settings,
    run_date: dt.date,
    keep: set[str],
    known: set[str],
    run_id: str,
) -> dict[str, Any]:
    """Retention, pruning, compaction, vacuum and log cleanup of one table; its report row."""
    started = time.monotonic()
    unknown = Footprint(0, 0, 0, 0, None)
    before = after = unknown
    pruned: list[str] = []
    compacted = 0
    vacuumed: list[str] = []
    error = None
    try:
        before = footprint(lake, spec.name)
        _set_retention(lake, spec.name, retention_properties(settings, spec.name))
        if spec.lifecycle.prune == "model_versions":
            pruned = prune_model_versions(lake, spec.name, keep, known)
        compacted = _compact(lake, spec, settings, run_date)
        # retention_hours=None: the table's delta.deletedFileRetentionDuration, checked >= it
        vacuumed = recommitting(
            lambda: lake.table(spec.name).vacuum(
                retention_hours=None, dry_run=False, enforce_retention_duration=True, full=True
            )
        )
        table = lake.table(spec.name)
        table.create_checkpoint()
        table.cleanup_metadata()  # commits older than delta.logRetentionDuration, before it
        after = footprint(lake, spec.name)
    except Exception as exc:  # recorded in its row; the other tables still get maintained
        error = f"{type(exc).__name__}: {exc}"
    row = _row(run_id, run_date, spec.name, before, after, started)
    row.update(files_compacted=compacted, files_vacuumed=len(vacuumed), pruned=pruned)
    if error is not None:
        row.update(status="failed", details=error)
    return row


def run_maintenance(
    lake: Lake,
    settings: Settings,
    run_date: dt.date,
    tables: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """Maintain every existing table (or ``tables``) and the artifacts; rows land in
    ``maintenance_runs``. Raises :class:`MaintenanceError` after writing them if any failed."""
    check_table_names(settings)
    names = list(tables) if tables is not None else list(ALL_TABLES)
    for name in names:
        if name not in ALL_TABLES:
            raise ConfigError(f"unknown table {name!r}; known tables: {sorted(ALL_TABLES)}")
    run_id = f"{run_date.isoformat()}T{dt.datetime.now(dt.UTC):%H%M%S.%f}"
    keep = kept_models(lake, settings, run_date)
    known = {str(m["model_version"]) for m in list_models(lake)}
    rows = [
        maintain_table(lake, ALL_TABLES[name], settings, run_date, keep, known, run_id)
        for name in names
        if lake.exists(name)
    ]
    if tables is None:
        started = time.monotonic()
        before = folder_footprint(settings.artifacts_root)
        row = _row(run_id, run_date, ARTIFACTS, before, before, started)
        try:
            row["pruned"] = prune_artifacts(lake, settings, run_date, keep)
        except OSError as exc:
            row.update(status="failed", details=f"{type(exc).__name__}: {exc}")
        after = folder_footprint(settings.artifacts_root)
        row.update(files_after=after.files, live_files_after=after.files, bytes_after=after.bytes)
        rows.append(row)
    lake.append(MAINTENANCE_RUNS.name, pa.Table.from_pylist(rows, schema=MAINTENANCE_RUNS.schema))
    failed = [f"{r['table_name']}: {r['details']}" for r in rows if r["status"] != "ok"]
    if failed:
        raise MaintenanceError("maintenance failed for " + "; ".join(failed))
    return rows
