"""Spark-facing reads and writes of lake tables, through delta-spark.

Reads are ``format("delta")`` scans (``versionAsOf`` for pinned inputs, partition filters pruned
by Delta from the log); writes are Delta's own writers, run by the executors, committed by Delta
(``replaceWhere`` for one partition, app transactions ``txnAppId``/``txnVersion`` for writes that
must happen once); MERGE is :class:`delta.tables.DeltaTable`. Table names, schemas and
partitioning come from the registry (:mod:`flixlake.lake.tables`); the session must be built by
:func:`flixlake.ops.spark.build_spark_session` (Delta's jars and its protocol defaults).

>>> df = read_table(spark, lake, "watch_sessions", version=12)               # doctest: +SKIP
>>> write_table(df, lake, "watch_sessions", mode="overwrite",
...             replace_partitions={"event_date": "2026-11-22"})              # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.types import StructType

from flixlake.lake.store import Lake, MissingTableError
from flixlake.lake.tables import ALL_TABLES, TableSpec, table_spec


def spark_schema(spec: TableSpec) -> StructType:
    """The registered schema as Spark types (timestamps are UTC instants)."""
    return from_arrow_schema(spec.schema, prefer_timestamp_ntz=False)


def with_schema(df: DataFrame, schema: StructType) -> DataFrame:
    """Select the schema's columns in order, cast to its types (what a table stores)."""
    return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])


def table_location(lake: Lake, name: str) -> str:
    """Where Spark finds a table: the lake path, with ``s3://`` spelled ``s3a://`` (Hadoop's S3A)."""
    path = lake.path(name)
    if path.startswith("s3://"):
        return "s3a://" + path.removeprefix("s3://")
    return path.removeprefix("file://")


def table_exists(spark: SparkSession, lake: Lake, name: str) -> bool:
    return bool(DeltaTable.isDeltaTable(spark, table_location(lake, name)))


def _missing(lake: Lake, name: str) -> MissingTableError:
    return MissingTableError(
        f"table {name!r} does not exist yet under {lake.root} (written by {table_spec(name).owner})"
    )


def read_table(
    spark: SparkSession,
    lake: Lake,
    name: str,
    version: int | None = None,
    partition_filter: str | None = None,
) -> DataFrame:
    """A table snapshot (latest, or pinned ``version``) as a DataFrame with the registry schema.

    ``partition_filter``, a SQL predicate on partition columns (``"event_date >= '2026-11-22'"``),
    lets Delta skip the files of other partitions (from the log, before any file is opened).
    """
    spec = table_spec(name)
    location = table_location(lake, name)
    if not table_exists(spark, lake, name):
        raise _missing(lake, name)
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", int(version))
    df = reader.load(location)
    if partition_filter is not None:
        df = df.where(partition_filter)
    return with_schema(df, spark_schema(spec))


def register_views(spark: SparkSession, lake: Lake) -> list[str]:
    """Register every existing table by its registry name in the session's catalog.

    They are external Delta tables at their lake location (nothing is copied), so Spark SQL reads
    them by name, with time travel: ``SELECT * FROM ratings VERSION AS OF 3``. Returns the names.
    """
    names = []
    for name in ALL_TABLES:
        if table_exists(spark, lake, name):
            location = table_location(lake, name).replace("'", "\\'")
            spark.sql(f"DROP TABLE IF EXISTS {name}")  # an earlier lake of this session
            spark.sql(f"CREATE TABLE {name} USING DELTA LOCATION '{location}'")
            names.append(name)
    return names


def sql_literal(value: Any) -> str:
    """A Python value as a Spark SQL literal (for ``replaceWhere`` predicates)."""
    if value is None:
        raise ValueError("a partition value of None cannot be replaced by equality")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dt.datetime):
        return f"TIMESTAMP '{value.isoformat(sep=' ')}'"
    if isinstance(value, dt.date):
        return f"DATE '{value.isoformat()}'"
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def partition_predicate(values: Mapping[str, Any]) -> str:
    """``{"model_version": "v3"}`` -> ``model_version = 'v3'`` (AND-ed)."""
    return " AND ".join(f"`{k}` = {sql_literal(v)}" for k, v in values.items())


def ensure_table(spark: SparkSession, lake: Lake, name: str) -> None:
    """Create the table empty with its registered schema (NOT NULL columns, partitioning) and
    the lake's table properties (retention, see :func:`~flixlake.lake.store.lake_from_settings`).

    A DataFrame writer creating it would make every column nullable; readers (the quality gate,
    delta-rs) expect the registry's schema. A table written before the registry gained a nullable
    column gets that column added (old rows read it as null), as :meth:`Lake.ensure` does.
    """
    spec = table_spec(name)
    if table_exists(spark, lake, name):
        _add_missing_columns(spark, table_location(lake, name), spec)
        return
    builder = (
        DeltaTable.createIfNotExists(spark)
        .location(table_location(lake, name))
        .addColumns(spark_schema(spec))
        .comment(spec.description)
    )
    if spec.partition_by:
        builder = builder.partitionedBy(*spec.partition_by)
    for key, value in lake.creation_properties(name).items():
        builder = builder.property(key, value)  # retention: maintenance then commits nothing
    builder.execute()


def _add_missing_columns(spark: SparkSession, location: str, spec: TableSpec) -> None:
    present = set(spark.read.format("delta").load(location).schema.fieldNames())
    added = [f for f in spark_schema(spec).fields if f.name not in present and f.nullable]
    if added:
        columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in added)
        spark.sql(f"ALTER TABLE delta.`{location}` ADD COLUMNS ({columns})")


def _latest_commit(spark: SparkSession, location: str) -> tuple[int, dict[str, str]] | None:
    """The newest commit of a table: its version and operation metrics (None: no table)."""
    if not DeltaTable.isDeltaTable(spark, location):
        return None
    row = DeltaTable.forPath(spark, location).history(1).select("version", "operationMetrics")
    first = row.first()
    if first is None:
        return None
    return int(first["version"]), dict(first["operationMetrics"] or {})


def write_table(
    df: DataFrame,
    lake: Lake,
    name: str,
    mode: str = "append",
    replace_partitions: dict[str, str] | None = None,
    app_id: str | None = None,
    txn_version: int | None = None,
    replace_where: str | None = None,
) -> int:
    """Executors write the rows; Delta commits them in one transaction.

    ``mode="overwrite"`` with ``replace_partitions`` (e.g. ``{"model_version": "v3"}``) replaces
    just that partition (``replaceWhere``), as does ``replace_where`` (a SQL predicate on partition
    columns, e.g. ``"event_date IN (DATE '2026-11-21', DATE '2026-11-22')"``); without either,
    the whole table. With ``app_id`` the write
    happens at most once per ``(app_id, txn_version)`` (a replay commits nothing). Returns the
    number of rows committed (0 for a replay).
    """
    if mode not in ("append", "overwrite"):
        raise ValueError(f"write_table: mode must be append or overwrite, got {mode!r}")
    spec = table_spec(name)
    spark = df.sparkSession
    location = table_location(lake, name)
    ensure_table(spark, lake, name)
    before = _latest_commit(spark, location)
    writer = with_schema(df, spark_schema(spec)).write.format("delta").mode(mode)
    if spec.partition_by:
        writer = writer.partitionBy(*spec.partition_by)
    if mode == "overwrite":
        if replace_where is not None:
            writer = writer.option("replaceWhere", replace_where)
        elif replace_partitions:
            writer = writer.option("replaceWhere", partition_predicate(replace_partitions))
        else:  # the whole table, whatever the session's partitionOverwriteMode says
            writer = writer.option("partitionOverwriteMode", "static")
    if app_id is not None:
        writer = writer.option("txnAppId", app_id).option("txnVersion", int(txn_version or 0))
    writer.save(location)
    after = _latest_commit(spark, location)
    if after is None or (before is not None and after[0] == before[0]):
        return 0  # the app transaction was already committed: Delta skipped the write
    return int(after[1].get("numOutputRows", "0"))


def append_once(
    df: DataFrame, lake: Lake, name: str, app_id: str, txn_version: int, ensure: bool = True
) -> None:
    """Append with the app transaction ``(app_id, txn_version)``: a replay commits nothing.

    The streaming hot path: no bookkeeping reads around the write (see :func:`write_table`);
    ``ensure=False`` also skips :func:`ensure_table`, for a caller that ensured the table once.
    A concurrent writer with the same app id fails its commit instead of doubling rows.
    """
    spec = table_spec(name)
    if ensure:
        ensure_table(df.sparkSession, lake, name)
    writer = with_schema(df, spark_schema(spec)).write.format("delta").mode("append")
    if spec.partition_by:
        writer = writer.partitionBy(*spec.partition_by)
    writer.option("txnAppId", app_id).option("txnVersion", int(txn_version)).save(
        table_location(lake, name)
    )


def warm_state(spark: SparkSession, lake: Lake, name: str) -> None:
    """Compute the table's current state now, so that its next app-transaction append need not.

    Delta 4.4 reconstructs a snapshot's state (three Spark jobs over the log since its last
    checkpoint) the first time a writer asks for its app transactions, i.e. in every idempotent
    append after a commit. Asking for the table's details (file count and size come from the
    same state) right after a commit, off the micro-batch's critical path, leaves the next
    append only its write: measured with 1,000-row appends (README, "Performance").
    """
    DeltaTable.forPath(spark, table_location(lake, name)).detail().collect()


def compact_table(
    spark: SparkSession, lake: Lake, name: str, partitions: Mapping[str, Any] | None = None
) -> dict[str, int]:
    """Bin-pack small files (e.g. one per micro-batch), of one partition when given: OPTIMIZE."""
    optimizer = DeltaTable.forPath(spark, table_location(lake, name)).optimize()
    if partitions:
        optimizer = optimizer.where(partition_predicate(partitions))
    row = optimizer.executeCompaction().select("metrics.numFilesAdded", "metrics.numFilesRemoved")
    first = row.first()
    return {} if first is None else {"files_added": first[0], "files_removed": first[1]}


def vacuum_table(spark: SparkSession, lake: Lake, name: str, retention_hours: float) -> None:
    """Delete files no snapshot younger than ``retention_hours`` still references: VACUUM."""
    DeltaTable.forPath(spark, table_location(lake, name)).vacuum(retention_hours)


def merge_table(
    df: DataFrame,
    lake: Lake,
    name: str,
    keys: Iterable[str] | None = None,
    updates: Mapping[str, str] | None = None,
    matched_condition: str | None = None,
) -> dict[str, int]:
    """MERGE rows on the table's natural key (:class:`DeltaTable`): update matches, insert the rest.

    ``updates`` (column -> SQL over ``t.`` target and ``s.`` source) replaces update-all for
    matches; ``matched_condition`` (SQL over ``t.``/``s.``) updates only the matches it holds for.
    The table is created with its registered schema if missing. Returns Delta's
    operation metrics (``numTargetRowsInserted``, ``numTargetRowsUpdated``, ...).
    """
    spec = table_spec(name)
    key_list = list(keys or spec.keys)
    if not key_list:
        raise ValueError(f"{name}: no merge keys")
    spark = df.sparkSession
    location = table_location(lake, name)
    source = with_schema(df, spark_schema(spec))
    ensure_table(spark, lake, name)
    condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in key_list)
    merger = DeltaTable.forPath(spark, location).alias("t").merge(source.alias("s"), condition)
    if updates:
        merger = merger.whenMatchedUpdate(condition=matched_condition, set=dict(updates))
    else:
        merger = merger.whenMatchedUpdateAll(condition=matched_condition)
    merger.whenNotMatchedInsertAll().execute()
    latest = _latest_commit(spark, location)
    metrics = latest[1] if latest else {}
    return {k: int(v) for k, v in metrics.items() if v.isdigit()}
