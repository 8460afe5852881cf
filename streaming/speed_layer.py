"""The speed layer: Kafka topic -> exactly-once bronze/quarantine -> speed views, until stopped.

Two streaming queries in one Spark application: the events query (``kafka.topic`` -> bronze,
quarantine, speed views) and, with ``streaming.land_served``, the served-answers query
(``serving.telemetry.served_topic`` -> ``served_recommendations``), each with its own checkpoint.

    PYSPARK_PYTHON=.venv/bin/python .venv/bin/spark-submit streaming/speed_layer.py \\
        --env local --home var [--bootstrap-servers 127.0.0.1:9092] [--run-seconds 600]

Offsets live in ``$FLIXLAKE_HOME/checkpoints/<streaming.query_name>`` (and ``<...>_served``); a
restart (also after ``kill -9``) resumes there and replays the unfinished batch, which commits
nothing twice.
Exit code 0 after a clean stop (Ctrl-C or --run-seconds), 1 if the query failed, 2 on a user
error (bad config, checkpoint that does not match the lake).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from flixlake.config import ConfigError, load_settings
from flixlake.lake.store import lake_from_settings
from flixlake.ops.spark import build_spark_session
from flixlake.streaming.harness import SpeedLayerError
from flixlake.streaming.job import run_speed_layer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; streaming settings given here override the config file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default=None, help="config environment (default $FLIXLAKE_ENV)")
    parser.add_argument("--home", default=None, help="state folder (default $FLIXLAKE_HOME)")
    parser.add_argument(
        "--bootstrap-servers", default=None, help="override kafka.bootstrap_servers"
    )
    parser.add_argument("--topic", default=None, help="override kafka.topic")
    parser.add_argument("--query-name", default=None, help="override streaming.query_name")
    parser.add_argument("--trigger-seconds", type=float, default=None)
    parser.add_argument("--max-events-per-trigger", type=int, default=None)
    parser.add_argument("--run-seconds", type=float, default=None, help="stop after this long")
    return parser.parse_args(argv)


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """The config overrides named on the command line."""
    streaming = {
        key: value
        for key, value in {
            "query_name": args.query_name,
            "trigger_seconds": args.trigger_seconds,
            "max_events_per_trigger": args.max_events_per_trigger,
        }.items()
        if value is not None
    }
    kafka = {
        key: value
        for key, value in {"bootstrap_servers": args.bootstrap_servers, "topic": args.topic}.items()
        if value is not None
    }
    return {"streaming": streaming, "kafka": kafka}


def main(argv: list[str] | None = None) -> int:
    """Load config, build the one session, run the speed layer until stopped."""

    args = parse_args(argv)
    try:
        settings = load_settings(args.env, home=args.home, overrides=overrides_from(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    spark = build_spark_session(settings, app_name=f"flixlake-{settings.streaming.query_name}")
    try:
        summary = run_speed_layer(
            spark, settings, lake_from_settings(settings), timeout=args.run_seconds
        )
    except SpeedLayerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1 if exc.__cause__ is not None else 2
    finally:
        spark.stop()
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
