"""Delta Lake I/O through delta-rs: the only module that touches table files and the log.

Every write names its table from :mod:`flixlake.lake.tables`, so schemas and partitioning live in one
place. Writes that must happen once (ingest chunks, stream micro-batches) carry a Delta app
transaction: a replay with the same ``(app_id, version)`` commits nothing.

>>> lake = Lake("/tmp/lake")                                          # doctest: +SKIP
>>> lake.append("quarantine_events", rows, app_id="ingest:ab12", txn_version=0)  # doctest: +SKIP
True
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from deltalake import CommitProperties, DeltaTable, QueryBuilder, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.schema import Field as DeltaField
from deltalake.transaction import AddAction, RemoveAction
from pyarrow.parquet import filters_to_expression

from flixlake.config import Settings
from flixlake.lake.tables import ALL_TABLES, TableSpec, table_spec

# A commit another writer's commit conflicted with (the daily maintenance setting a table's
# retention, a concurrent compaction) wrote nothing: redo the write on the new snapshot.
COMMIT_ATTEMPTS = 4
T = TypeVar("T")


def recommitting(write: Callable[[], T]) -> T:
    """Run a delta-rs write; redo it when its commit lost to a concurrent one (nothing written)."""
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            return write()
        except CommitFailedError:
            if attempt == COMMIT_ATTEMPTS:
                raise
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


LOG_RETENTION_KEY = "delta.logRetentionDuration"
_LOG_VERSION = re.compile(r"(\d{20})\.")  # a log file's (first) version: commits, checkpoints
DEFAULT_LOG_RETENTION = "interval 30 days"  # Delta's default when the property is unset


class MissingTableError(LookupError):
    """A table the caller needs has not been written yet."""


@dataclass(frozen=True)
class DataFile:
    """A parquet file already written inside a table's folder, to be committed."""

    relative_path: str
    size: int
    partition_values: Mapping[str, str | None]
    num_records: int


def _plain(type_: pa.DataType) -> pa.DataType:
    if pa.types.is_string_view(type_):
        return pa.string()
    if pa.types.is_binary_view(type_):
        return pa.binary()
    if pa.types.is_list(type_) or pa.types.is_large_list(type_) or pa.types.is_list_view(type_):
        return pa.list_(_plain(type_.value_type))
    if pa.types.is_struct(type_):
        return pa.struct([f.with_type(_plain(f.type)) for f in type_])
    return type_


def without_views(table: pa.Table) -> pa.Table:
    """Cast DataFusion's string/binary *view* columns to plain ones (CSV, pandas, older readers)."""
    schema = pa.schema([f.with_type(_plain(f.type)) for f in table.schema])
    return table if schema.equals(table.schema) else table.cast(schema)


def conform(spec: TableSpec, data: pa.Table) -> pa.Table:
    """Select the table's columns in schema order and cast to its types (fails on a missing one)."""
    missing = [c for c in spec.columns if c not in data.column_names]
    if missing:
        raise ValueError(f"{spec.name}: data lacks columns {missing}")
    return data.select(spec.columns).cast(spec.schema)


class Lake:
    """A folder (or object-store prefix) of Delta tables named in the registry."""

    def __init__(
        self,
        root: str | Path,
        storage_options: dict[str, str] | None = None,
        table_properties: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.root = str(root)
        self.storage_options = storage_options
        # table name -> Delta properties a table gets when this lake creates it (retention)
        self.table_properties = {k: dict(v) for k, v in (table_properties or {}).items()}
        if "://" not in self.root:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def creation_properties(self, name: str) -> dict[str, str]:
        """The Delta properties a table gets when either engine creates it in this lake: the
        registry's own for the table (e.g. bronze's statistics columns), then this lake's
        (retention)."""
        return {**dict(table_spec(name).properties), **self.table_properties.get(name, {})}

    # -- locating -----------------------------------------------------------------------------
    def path(self, name: str) -> str:
        table_spec(name)  # validate the name
        return f"{self.root.rstrip('/')}/{name}"

    def exists(self, name: str) -> bool:
        return DeltaTable.is_deltatable(self.path(name), self.storage_options)

    def table(self, name: str, version: int | None = None) -> DeltaTable:
        """Open a table (optionally at a pinned version); a clear error when it is missing."""
        try:
            return DeltaTable(
                self.path(name), version=version, storage_options=self.storage_options
            )
        except TableNotFoundError:
            raise MissingTableError(
                f"table {name!r} does not exist yet under {self.root} "
                f"(written by {table_spec(name).owner})"
            ) from None

    def version(self, name: str) -> int | None:
        return self.table(name).version() if self.exists(name) else None

    def versions(self, names: Iterable[str] | None = None) -> dict[str, int | None]:
        """Current Delta version of each table, for provenance."""
        return {n: self.version(n) for n in (names or ALL_TABLES)}

    def ensure(self, name: str) -> DeltaTable:
        """Create the table empty with its registered schema if it does not exist.

        A table written before the registry gained a nullable column gets that column added
        (old rows read it as null), so a lake survives the schema growing.
        """
        spec = table_spec(name)
        if not self.exists(name):
            DeltaTable.create(
                self.path(name),
                spec.schema,
                mode="ignore",
                partition_by=list(spec.partition_by) or None,
                name=spec.name,
                description=spec.description,
                configuration=self.creation_properties(name) or None,
                storage_options=self.storage_options,
            )
        table = self.table(name)
        present = set(table.schema().to_arrow().names)
        added = [f for f in spec.schema if f.name not in present and f.nullable]
        if added:
            table.alter.add_columns([DeltaField.from_arrow(f) for f in added])
            table = self.table(name)
        return table

    # -- reading ------------------------------------------------------------------------------
    def read(
        self,
        name: str,
        version: int | None = None,
        columns: list[str] | None = None,
        filters: Any = None,
    ) -> pa.Table:
        """Read a table (or a pinned version of it) into Arrow.

        Files delta-rs wrote through DataFusion (MERGE, some rewrites) record string columns as
        ``string_view``, for which pyarrow has no comparison kernels: a filter the file
        statistics cannot decide alone (a file of many rows, e.g. after compaction) then fails
        with ``ArrowNotImplementedError``. Such a read is redone without the pushdown: the rows
        are read, cast to plain strings and filtered in memory.
        """
        table = self.table(name, version)
        try:
            return table.to_pyarrow_table(columns=columns, filters=filters)
        except pa.ArrowNotImplementedError:
            if filters is None:
                raise
        expression = (
            filters if isinstance(filters, pc.Expression) else filters_to_expression(filters)
        )
        rows = without_views(table.to_pyarrow_table()).filter(expression)
        return rows.select(columns) if columns is not None else rows

    def file_uris(self, name: str, version: int | None = None) -> list[str]:
        """Active data files of a snapshot (for Spark's parquet reader)."""
        return self.table(name, version).file_uris()

    def sql(self, query: str) -> pa.Table:
        """Run SQL (DataFusion) over every existing table, referenced by its registry name."""
        builder = QueryBuilder()
        for name in ALL_TABLES:
            if self.exists(name):
                builder = builder.register(name, self.table(name))
        return without_views(pa.table(builder.execute(query).read_all()))

    # -- writing ------------------------------------------------------------------------------
    def applied(self, name: str, app_id: str, txn_version: int) -> bool:
        """Whether a write tagged ``(app_id, txn_version)`` (or a later one) is committed."""
        done = self.txn_version(name, app_id)
        return done is not None and done >= txn_version

    def txn_version(self, name: str, app_id: str) -> int | None:
        """The latest committed version of app transaction ``app_id`` (None: none, or no table)."""
        if not self.exists(name):
            return None
        return self.table(name).transaction_version(app_id)

    def _commit_properties(
        self,
        app_id: str | None,
        txn_version: int | None,
        metadata: dict[str, Any] | None,
        also_record: Mapping[str, int] | None = None,
    ) -> CommitProperties:
        now_ms = int(time.time() * 1000)
        txns = [Transaction(a, int(v), now_ms) for a, v in (also_record or {}).items()]
        if app_id is not None:
            txns.insert(0, Transaction(app_id, int(txn_version or 0), now_ms))
        custom = {
            k: json.dumps(v) if not isinstance(v, str) else v for k, v in (metadata or {}).items()
        }
        return CommitProperties(custom_metadata=custom or None, app_transactions=txns or None)

    def append(
        self,
        name: str,
        data: pa.Table,
        app_id: str | None = None,
        txn_version: int | None = None,
        metadata: dict[str, Any] | None = None,
        also_record: Mapping[str, int] | None = None,
    ) -> bool:
        """Append rows; with ``app_id`` the append happens at most once. Returns whether it wrote.

        ``also_record`` (app id -> version) commits further app transactions in the same commit
        as the rows, e.g. what a file ingest verified, so the record and the rows are one step.
        """
        commit = self._commit_properties(app_id, txn_version, metadata, also_record)

        def once() -> bool:
            # checked again on a retry: a concurrent writer may have committed this very txn
            if app_id is not None and self.applied(name, app_id, txn_version or 0):
                return False
            self._write(name, data, "append", commit=commit)
            return True

        return recommitting(once)

    def _write(
        self,
        name: str,
        data: pa.Table,
        mode: Literal["append", "overwrite"],
        predicate: str | None = None,
        commit: CommitProperties | None = None,
    ) -> None:
        """The one delta-rs write: registry schema and partitioning, table created if missing."""
        spec = table_spec(name)
        self.ensure(name)
        # delta-rs accepts a predicate only with overwrite (replace-where)
        where: dict[str, Any] = {} if predicate is None else {"predicate": predicate}
        rows = conform(spec, data)
        recommitting(
            lambda: write_deltalake(
                self.path(name),
                rows,
                mode=mode,
                partition_by=list(spec.partition_by) or None,
                storage_options=self.storage_options,
                commit_properties=commit,
                **where,
            )
        )

    def replace_where(self, name: str, data: pa.Table, predicate: str) -> None:
        """Atomically replace the rows matching ``predicate`` (a partition, a run) with ``data``."""
        self._write(name, data, "overwrite", predicate=predicate)

    def upsert(
        self,
        name: str,
        data: pa.Table,
        keys: Iterable[str] | None = None,
        updates: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """MERGE rows on the table's natural key: update matches, insert the rest.

        ``updates`` (column -> SQL over ``t.`` target and ``s.`` source, e.g.
        ``{"last_seen": "greatest(t.last_seen, s.last_seen)"}``) replaces update-all for matches.
        """
        spec = table_spec(name)
        keys = list(keys or spec.keys)
        if not keys:
            raise ValueError(f"{name}: no merge keys")
        self.ensure(name)
        predicate = " AND ".join(f"t.{k} = s.{k}" for k in keys)
        source = conform(spec, data)

        def merge() -> dict[str, Any]:
            merger = self.table(name).merge(source, predicate, source_alias="s", target_alias="t")
            if updates:
                merger = merger.when_matched_update(dict(updates))
            else:
                merger = merger.when_matched_update_all()
            result: dict[str, Any] = merger.when_not_matched_insert_all().execute()
            return result

        return recommitting(merge)

    def overwrite(self, name: str, data: pa.Table) -> None:
        """Atomically replace the whole table's contents (readers see old or new, never a mix)."""
        self._write(name, data, "overwrite")

    def compact(
        self, name: str, partition_filters: list[tuple[str, str, Any]] | None = None
    ) -> dict[str, Any]:
        """Bin-pack small files (e.g. one per stream micro-batch) of the matching partitions."""
        return self.table(name).optimize.compact(partition_filters=partition_filters)

    def vacuum(self, name: str, retention_hours: int, full: bool = False) -> list[str]:
        """Delete files no snapshot younger than ``retention_hours`` still references.

        ``full`` also deletes files the log never mentions (a crashed writer's) once their
        modification time is older than ``retention_hours``; without it only removed files go,
        so a concurrent writer's not yet committed files are safe whatever the retention.
        """
        return self.table(name).vacuum(
            retention_hours=retention_hours,
            dry_run=False,
            enforce_retention_duration=False,
            full=full,
        )

    def delete(self, name: str, predicate: str) -> int:
        """Delete the rows matching ``predicate`` (SQL); returns how many went (0: no table)."""
        if not self.exists(name):
            return 0
        metrics = self.table(name).delete(predicate)
        return int(metrics.get("num_deleted_rows") or 0)

    def update(self, name: str, updates: Mapping[str, str], predicate: str) -> int:
        """Set columns to SQL expressions in the rows matching ``predicate``; returns how many."""
        if not self.exists(name):
            return 0
        metrics = self.table(name).update(updates=dict(updates), predicate=predicate)
        return int(metrics.get("num_updated_rows") or 0)

    def expire_log(self, name: str) -> int:
        """Checkpoint, then delete every older commit, checkpoint and checksum of the table's log.

        Old commits keep what they recorded: file statistics (min/max values of each column),
        operation parameters such as a DELETE's predicate; delta-spark's version checksums
        (``<version>.crc``) list every file with its statistics. After this the table's history
        starts at the checkpoint, so no earlier version can be read. delta-rs' log clean-up runs
        with the log retention set to zero, then back to what it was (Delta's default 30 days
        when unset); what it leaves below the checkpoint (checksums, staged commits) and Hadoop's
        ``.<file>.crc`` of files that are gone are deleted after it. Returns how many files went.
        """
        before = self._files(name)
        table = self.table(name)
        previous = table.metadata().configuration.get(LOG_RETENTION_KEY, DEFAULT_LOG_RETENTION)
        table.alter.set_table_properties({LOG_RETENTION_KEY: "interval 0 seconds"})
        table = self.table(name)
        table.create_checkpoint()
        checkpoint = table.version()
        table.cleanup_metadata()
        self.table(name).alter.set_table_properties({LOG_RETENTION_KEY: previous})
        self._sweep_below(name, checkpoint)
        return len(before - self._files(name))

    def _filesystem(self, name: str) -> tuple[pafs.FileSystem, str]:
        path = self.path(name)
        return pafs.FileSystem.from_uri(path if "://" in path else os.path.abspath(path))

    def _files(self, name: str) -> set[str]:
        """Every file under a table's folder, its log included."""
        fs, base = self._filesystem(name)
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return {i.path for i in infos if i.type == pafs.FileType.File}

    def _sweep_below(self, name: str, checkpoint: int) -> None:
        """Delete log files of versions before ``checkpoint`` and checksums of deleted files."""
        fs, base = self._filesystem(name)
        files = self._files(name)
        log_dir = f"{base.rstrip('/')}/_delta_log/"
        doomed = []
        for path in files:
            folder, file_name = path.rsplit("/", 1)
            version = _LOG_VERSION.match(file_name.lstrip("."))
            old = path.startswith(log_dir) and version and int(version.group(1)) < checkpoint
            # Hadoop's local file system writes .<file>.crc beside each file it writes
            orphan_checksum = (
                file_name.startswith(".")
                and file_name.endswith(".crc")
                and f"{folder}/{file_name[1:-4]}" not in files
            )
            if old or orphan_checksum:
                doomed.append(path)
        for path in doomed:
            fs.delete_file(path)

    def commit_files(
        self,
        name: str,
        files: list[DataFile],
        mode: Literal["append", "overwrite"] = "append",
        partition_filters: list[tuple[str, str, Any]] | None = None,
        app_id: str | None = None,
        txn_version: int | None = None,
    ) -> bool:
        """Commit parquet files that executors wrote into the table folder (no data via driver).

        With ``mode="overwrite"`` and ``partition_filters`` only the matching partitions are
        replaced. Returns False when the app transaction was already committed.
        """
        if app_id is not None and self.applied(name, app_id, txn_version or 0):
            return False
        spec = table_spec(name)
        table = self.ensure(name)
        now_ms = int(time.time() * 1000)
        actions: list[AddAction | RemoveAction] = [
            AddAction(
                path=f.relative_path,
                size=f.size,
                partition_values=dict(f.partition_values),
                modification_time=now_ms,
                data_change=True,
                stats=json.dumps({"numRecords": f.num_records}),
            )
            for f in files
        ]
        table.create_write_transaction(
            actions,
            mode=mode,
            schema=spec.schema,
            partition_by=list(spec.partition_by) or None,
            partition_filters=partition_filters,
            commit_properties=self._commit_properties(app_id, txn_version, None),
        )
        return True

    def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        return self.table(name).history(limit)

    def operations_since(self, name: str, version: int) -> list[str] | None:
        """The operations committed after ``version`` up to now (``WRITE``, ``OPTIMIZE``, ...),
        oldest first; None when the log no longer holds every one of them (cleaned up)."""
        current = self.table(name).version()
        if current <= version:
            return []
        entries = self.table(name).history(current - version)
        by_version = {int(e["version"]): e for e in entries if "version" in e}
        wanted = range(version + 1, current + 1)
        if any(v not in by_version for v in wanted):
            return None
        out = []
        for v in wanted:
            entry = by_version[v]
            mode = (entry.get("operationParameters") or {}).get("mode")
            operation = str(entry.get("operation"))
            out.append(f"{operation} {mode}" if operation == "WRITE" and mode else operation)
        return out

    def file_partitions(
        self, name: str, column: str, version: int | None = None
    ) -> dict[str, str | None]:
        """Each live data file of a snapshot with its value of partition ``column`` (from the log,
        no data file opened)."""
        actions = pa.table(self.table(name, version).get_add_actions(flatten=True))
        if actions.num_rows == 0:
            return {}
        values = actions[f"partition.{column}"].cast(pa.string()).to_pylist()
        return dict(zip(actions["path"].to_pylist(), values, strict=True))


def lake_from_settings(settings: Settings) -> Lake:
    """The lake configured for this environment: its root, and the retention properties its
    tables get at creation (``lifecycle`` in the config), so maintenance need not commit them."""
    return Lake(
        settings.lake_root,
        table_properties={name: settings.lifecycle.table_properties(name) for name in ALL_TABLES},
    )


def table_dir(lake: Lake, name: str) -> str:
    """Local folder of a table (for executors writing parquet files into it)."""
    path = lake.path(name)
    if "://" in path and not path.startswith("file://"):
        return path
    return os.path.abspath(path.removeprefix("file://"))
