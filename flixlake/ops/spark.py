"""The one place that builds a SparkSession; everything else receives ``spark`` as an argument."""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from flixlake.config import Settings

# Conf every flixlake session needs, whatever the environment says.
_REQUIRED_CONF = {
    # Delta readers expect INT64 micros, not Spark's legacy INT96.
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
}


def build_spark_session(settings: Settings, app_name: str | None = None) -> SparkSession:
    """Create (or reuse) the session for this environment, Python workers on this venv."""
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
    for key, value in {**conf.extra_conf, **_REQUIRED_CONF}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
