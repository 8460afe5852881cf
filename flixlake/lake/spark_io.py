"""Spark-facing reads and writes of lake tables, built on :mod:`flixlake.lake.store`.

Reads take a table snapshot's active files from delta-rs and let Spark's parquet reader scan
them; partition values come from the Delta log, not from folder names. Large writes are done by
the executors (parquet files inside the table folder) and then committed in one Delta
transaction, so big outputs never pass through the driver.
"""

from __future__ import annotations

import os
import shutil
import uuid
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.types import StructType

from flixlake.lake.store import DataFile, Lake, table_dir
from flixlake.lake.tables import ALL_TABLES, TableSpec, table_spec

_PATH_COL = "__flixlake_file"
_URI_COL = "__flixlake_file_uri"


def spark_schema(spec: TableSpec) -> StructType:
    """The registered schema as Spark types (timestamps are UTC instants)."""
    return from_arrow_schema(spec.schema, prefer_timestamp_ntz=False)


def with_schema(df: DataFrame, schema: StructType) -> DataFrame:
    """Select the schema's columns in order, cast to its types (what a table stores)."""
    return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])


def _normalize(path: str) -> str:
    return unquote(path.removeprefix("file://").removeprefix("file:"))


def _same_file(path: str) -> str:
    """A file's identity: local paths with symlinks resolved (delta-rs resolves them, we do not)."""
    path = _normalize(path)
    return path if "://" in path else os.path.realpath(path)


def _file_path(base: str, path: str) -> str:
    return path if "://" in path or path.startswith("/") else f"{base}/{path}"


def read_table(
    spark: SparkSession,
    lake: Lake,
    name: str,
    version: int | None = None,
    partition_filter: str | None = None,
) -> DataFrame:
    """A table snapshot (latest, or pinned ``version``) as a DataFrame with the registry schema.

    ``partition_filter``, a SQL predicate on partition columns (``"event_date >= '2026-11-22'"``),
    skips the files of other partitions (Spark would otherwise open every file of the table).
    """
    spec = table_spec(name)
    schema = spark_schema(spec)
    data_fields = [f for f in schema.fields if f.name not in spec.partition_by]
    table = lake.table(name, version)
    actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    base = table_dir(lake, name)
    if partition_filter is not None:
        kept = {_same_file(u) for u in table.file_uris(file_pruning_predicate=partition_filter)}
        actions = [a for a in actions if _same_file(_file_path(base, a["path"])) in kept]
        if kept and not actions:  # the two file lists disagree on how they spell paths
            raise RuntimeError(f"{name}: the pruned files match none of the table's files")
    if not actions:
        return spark.createDataFrame([], schema)
    paths = [_file_path(base, a["path"]) for a in actions]
    df = spark.read.schema(StructType(data_fields)).parquet(*paths)
    if spec.partition_by:
        partitions = spark.createDataFrame(
            [
                (_normalize(p), *[a.get(f"partition.{c}") for c in spec.partition_by])
                for p, a in zip(paths, actions, strict=True)
            ],
            [_PATH_COL, *spec.partition_by],
        )
        # Normalize each distinct file path once, not once per row (that costs ~5x the scan).
        # Normalizing an aggregate (max) keeps the optimizer from pushing it down to every row.
        files = (
            df.select(F.col("_metadata.file_path").alias(_URI_COL))
            .groupBy(_URI_COL)
            .agg(
                F.expr(f"try_url_decode(regexp_replace(max({_URI_COL}), '^file:(//)?', ''))").alias(
                    _PATH_COL
                )
            )
            .join(F.broadcast(partitions), _PATH_COL)
            .drop(_PATH_COL)
        )
        df = (
            df.withColumn(_URI_COL, F.col("_metadata.file_path"))
            .join(F.broadcast(files), _URI_COL)
            .drop(_URI_COL)
        )
    return with_schema(df, schema)


def register_views(spark: SparkSession, lake: Lake) -> list[str]:
    """Register every existing table as a temp view named like the table; returns the names."""
    names = []
    for name in ALL_TABLES:
        if lake.exists(name):
            read_table(spark, lake, name).createOrReplaceTempView(name)
            names.append(name)
    return names


def _partition_values(relative: str, partition_by: tuple[str, ...]) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for segment in relative.split("/")[:-1]:
        key, sep, value = segment.partition("=")
        if sep and key in partition_by:
            value = unquote(value)
            values[key] = None if value == "__HIVE_DEFAULT_PARTITION__" else value
    return values


def write_table(
    df: DataFrame,
    lake: Lake,
    name: str,
    mode: str = "append",
    replace_partitions: dict[str, str] | None = None,
    app_id: str | None = None,
    txn_version: int | None = None,
) -> int:
    """Executors write parquet into the table folder; one Delta commit makes it visible.

    ``mode="overwrite"`` with ``replace_partitions`` (e.g. ``{"model_version": "v3"}``) replaces
    just that partition; without it, the whole table. Returns the number of rows committed.
    """
    spec = table_spec(name)
    if app_id is not None and lake.applied(name, app_id, txn_version or 0):
        return 0
    lake.ensure(name)
    schema = spark_schema(spec)
    out = with_schema(df, schema)
    base = table_dir(lake, name)
    staging = f"w-{uuid.uuid4().hex[:16]}"
    target = os.path.join(base, staging)
    writer = out.write.mode("error")
    if spec.partition_by:
        writer = writer.partitionBy(*spec.partition_by)
    writer.parquet(target)
    files: list[DataFile] = []
    for dirpath, _dirs, filenames in os.walk(target):
        for filename in filenames:
            if not filename.endswith(".parquet"):
                os.remove(os.path.join(dirpath, filename))  # .crc and marker files
                continue
            full = os.path.join(dirpath, filename)
            relative = os.path.relpath(full, base)
            files.append(
                DataFile(
                    relative_path=relative,
                    size=os.path.getsize(full),
                    partition_values=_partition_values(relative, spec.partition_by),
                    num_records=pq.read_metadata(full).num_rows,
                )
            )
    filters = None
    if replace_partitions:
        filters = [(k, "=", v) for k, v in replace_partitions.items()]
    try:
        lake.commit_files(
            name,
            files,
            mode="overwrite" if mode == "overwrite" else "append",
            partition_filters=filters,
            app_id=app_id,
            txn_version=txn_version,
        )
    except Exception:
        shutil.rmtree(target, ignore_errors=True)  # nothing committed: leave no orphans
        raise
    return sum(f.num_records for f in files)
