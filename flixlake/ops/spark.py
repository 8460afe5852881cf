"""The one place that builds a SparkSession; everything else receives ``spark`` as an argument.

Every session has the jars of ``jvm/pom.xml`` (delta-spark, Spark's Kafka source) from the folder
``make`` resolved them into (:mod:`flixlake.ops.jvm`), Delta's SQL extension and catalog (tables
by name, ``VERSION AS OF``), and defaults that keep new Delta tables at the protocol delta-rs reads
and writes too: no deletion vectors, row tracking, v2 checkpoints, type widening or in-commit
timestamps (the service and ``flixlake sql`` read the same tables with delta-rs).
"""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from flixlake.config import Settings
from flixlake.ops.jvm import spark_jars_option

# Conf every flixlake session needs, whatever the environment says.
_REQUIRED_CONF = {
    # Delta readers expect INT64 micros, not Spark's legacy INT96.
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}

# Table features both engines read and write (see the README's "Two engines" section): new tables
# stay at protocol (1, 2) unless a table's own DDL asks for more, which flixlake never does.
DELTA_RS_COMPATIBLE_DEFAULTS = {
    "spark.databricks.delta.properties.defaults.enableDeletionVectors": "false",
    "spark.databricks.delta.properties.defaults.enableRowTracking": "false",
    "spark.databricks.delta.properties.defaults.checkpointPolicy": "classic",
    "spark.databricks.delta.properties.defaults.enableTypeWidening": "false",
    "spark.databricks.delta.properties.defaults.enableInCommitTimestamps": "false",
}

# Delta on a few local cores: its defaults are sized for clusters (50 snapshot partitions,
# 10,000 listing tasks in VACUUM) and make every small table slow. Environments may override.
_DEFAULT_CONF = {
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.sql.sources.parallelPartitionDiscovery.parallelism": "4",
    # flixlake vacuums with its own retention (streaming.vacuum_retention_hours)
    "spark.databricks.delta.retentionDurationCheck.enabled": "false",
    # Every commit needs the table's state (its app transactions for an idempotent append, its
    # file count for the commit's statistics). With a checksum file per commit, computed
    # incrementally from the previous one and the commit's own actions, a snapshot takes its
    # protocol, metadata and app transactions from the checksum; without it (or when a delta-rs
    # commit left none) Delta reconstructs the state from the log with Spark jobs. Measured with
    # a 1,000-row streaming append (README, "Performance"): no txn 4.15 -> 1.28 s at load 12.
    "spark.databricks.delta.writeChecksumFile.enabled": "true",
    "spark.databricks.delta.incremental.commit.enabled": "true",
    "spark.databricks.delta.incremental.commit.verify": "false",
    "spark.databricks.delta.setTransactionsInCrc.writeOnCommit": "true",
    "spark.databricks.delta.readProtocolAndMetadataFromChecksum.enabled": "true",
}


def session_conf(settings: Settings) -> dict[str, str]:
    """Every conf a flixlake session starts with (environment extras, then what is required)."""
    lake_on_s3 = str(settings.lake.root).startswith(("s3://", "s3a://"))
    return {
        **_DEFAULT_CONF,
        **settings.spark.extra_conf,
        **_REQUIRED_CONF,
        **DELTA_RS_COMPATIBLE_DEFAULTS,
        "spark.jars": spark_jars_option(s3=lake_on_s3),
    }


def build_spark_session(settings: Settings, app_name: str | None = None) -> SparkSession:
    """Create (or reuse) the session for this environment, Python workers on this venv.

    Under spark-submit the JVM already runs: its ``--jars`` (:func:`flixlake.ops.dag_tasks.
    spark_submit_command`) put the same jars on the driver's classpath.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # loopback only, no hostname lookups
    conf = settings.spark
    builder = (
        SparkSession.builder.master(conf.master)
        .appName(app_name or conf.app_name)
        .config("spark.driver.memory", conf.driver_memory)
        .config("spark.sql.shuffle.partitions", str(conf.shuffle_partitions))
        .config("spark.local.dir", str(settings.home / "spark-tmp"))
        .config("spark.driver.extraJavaOptions", "-Dderby.system.home=" + str(settings.home))
    )
    for key, value in session_conf(settings).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
