"""Where the JVM artifacts of ``jvm/pom.xml`` are: resolved by ``make`` at install time, never fetched.

``make`` runs ``mvn dependency:copy-dependencies`` once per side of the pom into
``jvm/target/jars/<side>`` (``$FLIXLAKE_JARS`` points elsewhere, e.g. on a cluster image):

* ``spark`` — delta-spark, delta-storage, spark-sql-kafka (kafka-clients 3.9.2): ``spark.jars`` of
  every session and ``--jars`` of every spark-submit;
* ``broker`` — the Apache Kafka 4.x broker (kafka-clients 4.x) and its log4j2 binding, on the
  classpath of the broker's own JVM only (the two kafka-clients never share a classpath);
* ``spark-s3`` — hadoop-aws and the AWS SDK bundle, only for an ``s3://`` lake (``make jars-s3``).

No pyspark import here: the DAG files build spark-submit commands with it.
"""

from __future__ import annotations

import os
from pathlib import Path

from flixlake.config import PROJECT_ROOT

JARS_VAR = "FLIXLAKE_JARS"
SPARK_SIDE = "spark"
BROKER_SIDE = "broker"
S3_SIDE = "spark-s3"
_MAKE_HINT = {
    SPARK_SIDE: "make jars",
    BROKER_SIDE: "make jars",
    S3_SIDE: "make jars-s3",
}


class JarsMissingError(RuntimeError):
    """The jars of one side of ``jvm/pom.xml`` were not resolved; the message says how."""


def jars_root() -> Path:
    """``$FLIXLAKE_JARS``, default ``<repo>/jvm/target/jars`` (where ``make`` puts them)."""
    return Path(os.environ.get(JARS_VAR) or PROJECT_ROOT / "jvm" / "target" / "jars")


def side_jars(side: str) -> list[Path]:
    """The jar files of one side of the pom, sorted; a clear error when they are missing."""
    folder = jars_root() / side
    jars = sorted(folder.glob("*.jar"))
    if not jars:
        raise JarsMissingError(
            f"no {side} jars in {folder}: resolve jvm/pom.xml first (`{_MAKE_HINT.get(side, 'make jars')}`"
            f" in {PROJECT_ROOT}, or set ${JARS_VAR} to a folder holding {side}/*.jar)"
        )
    return jars


def spark_jars(s3: bool = False) -> list[Path]:
    """What every Spark driver and executor needs on top of the pyspark wheel."""
    return side_jars(SPARK_SIDE) + (side_jars(S3_SIDE) if s3 else [])


def spark_jars_option(s3: bool = False) -> str:
    """``spark.jars`` / ``--jars``: the comma-separated jar paths."""
    return ",".join(str(p) for p in spark_jars(s3))


def broker_classpath() -> str:
    """The broker JVM's ``-cp``: ``<folder>/*`` (java expands it; checked to hold jars)."""
    side_jars(BROKER_SIDE)
    return str(jars_root() / BROKER_SIDE / "*")
