"""Commands on the lake's data: generate a history, ingest log files, query and list tables."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from flixlake.ops.cli.common import (
    EnvOpt,
    HomeOpt,
    console,
    err,
    fail,
    line_progress,
    print_table,
    settings_or_exit,
)

app = typer.Typer()


@app.command()
def generate(
    out: Annotated[
        Path, typer.Option(help="output folder for events-*.log, movies.jsonl, users.jsonl")
    ],
    users: Annotated[int, typer.Option(min=1, help="number of users")] = 2000,
    movies: Annotated[int, typer.Option(min=1, help="number of movies")] = 500,
    days: Annotated[int, typer.Option(min=1, help="days of history")] = 30,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same bytes)")] = 7,
    bad_rate: Annotated[float, typer.Option(min=0.0, max=1.0, help="fraction of bad lines")] = 0.0,
    end_date: Annotated[str | None, typer.Option(help="last day of history, YYYY-MM-DD")] = None,
    attack: Annotated[
        list[str] | None,
        typer.Option(
            help="inject a labelled attack, e.g. push, bandwagon:accounts=30,filler=10, "
            "flood:requests=500 (repeatable; labels go to attack_labels.json)"
        ),
    ] = None,
    regime: Annotated[
        str,
        typer.Option(
            help="lowrank: choices from a taste x movie logit (ALS's own model class); trends: "
            "popularity, recency and bursts with genre affinity, one-off users, 1-2 star raters"
        ),
    ] = "lowrank",
) -> None:
    """Write a synthetic history in the exact MLiP log format (deterministic per seed)."""
    from flixlake.sim.attacks import AttackSpecError, parse_attack
    from flixlake.sim.generate import generate_history
    from flixlake.sim.world import REGIMES

    if regime not in REGIMES:
        raise fail(f"--regime must be one of {', '.join(REGIMES)}, got {regime!r}")
    end = dt.date.fromisoformat(end_date) if end_date else None
    try:
        attacks = [parse_attack(a) for a in attack or []]
    except AttackSpecError as exc:
        raise fail(str(exc)) from None
    with line_progress() as progress:
        task = progress.add_task("generating", total=None)
        summary = generate_history(
            out,
            n_users=users,
            n_movies=movies,
            days=days,
            seed=seed,
            bad_rate=bad_rate,
            end=end,
            progress=lambda n: progress.update(task, completed=n),
            attacks=attacks,
            regime=regime,
        )
    console.print_json(json.dumps(summary, default=str))


@app.command("import-movielens")
def import_movielens(
    out: Annotated[
        Path, typer.Option(help="output folder for events-*.log, movies.jsonl, users.jsonl")
    ],
    source: Annotated[
        Path | None,
        typer.Option(
            help="the recbole 1.2.1 wheel or a folder with ml-100k.{inter,item,user} "
            "(default: the wheel `make movielens` downloads into .cache/movielens)"
        ),
    ] = None,
) -> None:
    """Write the public MovieLens 100k ratings as MLiP logs (each rating = a watch session + rate line).

    Then: flixlake ingest OUT && flixlake batch --run-date 1998-04-22. MovieLens terms: research
    use, no commercial use, cite Harper & Konstan, ACM TiiS 2015.
    """
    from flixlake.sim.movielens import DatasetMissingError, convert

    try:
        with line_progress() as progress:
            progress.add_task("converting MovieLens 100k", total=None)
            summary = convert(out, source)
    except DatasetMissingError as exc:
        raise fail(str(exc)) from None
    console.print_json(json.dumps(summary, default=str))


@app.command()
def ingest(
    paths: Annotated[
        list[Path], typer.Argument(help="log files or folders (metadata *.jsonl too)")
    ],
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Append log lines to bronze_events exactly once; rejects go to quarantine_events."""
    from flixlake.batch.ingest import ChangedLogFileError, expand_paths, ingest_paths
    from flixlake.lake.store import lake_from_settings

    settings = settings_or_exit(env, home)
    try:
        logs, _ = expand_paths(paths)
    except FileNotFoundError as exc:
        raise fail(str(exc)) from None
    total = sum(p.stat().st_size for p in logs)
    with line_progress() as progress:
        task = progress.add_task("ingesting", total=None)
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            progress.update(task, completed=done, description=f"ingesting ({total / 1e6:.0f} MB)")

        try:
            summary = ingest_paths(
                lake_from_settings(settings), paths, settings.ingest.chunk_lines, on_chunk=advance
            )
        except ChangedLogFileError as exc:
            raise fail(f"nothing ingested: {exc}") from None
    console.print_json(json.dumps(summary.as_dict()))


@app.command()
def sql(
    query: Annotated[
        str, typer.Argument(help='SQL over tables by name, e.g. "SELECT count(*) FROM ratings"')
    ],
    output: Annotated[str, typer.Option("--format", help="table | json | csv")] = "table",
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Query the lake's Delta tables by name (DataFusion through delta-rs; no Spark needed)."""
    from flixlake.lake.store import lake_from_settings

    settings = settings_or_exit(env, home)
    try:
        result = lake_from_settings(settings).sql(query)
    except Exception as exc:  # DataFusion reports planning/parse errors as generic exceptions
        raise fail(f"query failed: {exc}") from None
    rows = result.to_pylist()
    if output == "json":
        console.print_json(json.dumps(rows, default=str))
    elif output == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(result, sys.stdout.buffer)
    else:
        print_table(rows)


@app.command("spark-sql")
def spark_sql(
    query: Annotated[
        str | None,
        typer.Argument(
            help='Spark SQL over tables by name, e.g. "SELECT * FROM ratings VERSION AS OF 3"; '
            "without it, an interactive prompt (one statement per line, empty line quits)"
        ),
    ] = None,
    output: Annotated[str, typer.Option("--format", help="table | json | csv")] = "table",
    limit: Annotated[int, typer.Option(help="rows shown at most")] = 1000,
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Spark SQL (delta-spark) on every lake table by name, with time travel.

    Each table is registered as an external Delta table at its lake location, so
    ``VERSION AS OF n`` / ``TIMESTAMP AS OF '...'``, ``DESCRIBE HISTORY ratings`` and
    ``table_changes`` work as on any Delta catalog. Starts a local Spark (a few seconds).
    """
    from pyspark.errors import PySparkException

    from flixlake.lake.spark_io import register_views
    from flixlake.lake.store import lake_from_settings
    from flixlake.ops.spark import build_spark_session

    settings = settings_or_exit(env, home)
    spark = build_spark_session(settings, app_name="flixlake-spark-sql")
    try:
        names = register_views(spark, lake_from_settings(settings))
        err.print(f"tables: {', '.join(names) or '(none yet)'}")
        statements = [query] if query else _prompt_lines()
        for statement in statements:
            try:
                rows = [
                    r.asDict(recursive=True) for r in spark.sql(statement).limit(limit).collect()
                ]
            except PySparkException as exc:
                message = str(exc).splitlines()[0]
                if query:
                    raise fail(f"query failed: {message}") from None
                err.print(f"[red]query failed:[/red] {message}")
                continue
            _print_rows(rows, output)
    finally:
        spark.stop()


def _prompt_lines() -> Iterator[str]:
    while line := input("spark-sql> ").strip():
        yield line.rstrip(";")


def _print_rows(rows: list[dict[str, Any]], output: str) -> None:
    if output == "json":
        console.print_json(json.dumps(rows, default=str))
    elif output == "csv":
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    else:
        print_table(rows)


@app.command()
def tables(env: EnvOpt = None, home: HomeOpt = None) -> None:
    """List the lake's tables: Delta version, row count, the process that writes it and how."""
    from flixlake.lake.store import lake_from_settings
    from flixlake.lake.tables import ALL_TABLES

    lake = lake_from_settings(settings_or_exit(env, home))
    rows = []
    for name, spec in ALL_TABLES.items():
        exists = lake.exists(name)
        rows.append(
            {
                "table": name,
                "version": lake.version(name) if exists else None,
                "rows": lake.table(name).count() if exists else None,
                "owner": spec.owner,
                "engine": spec.engine,
            }
        )
    print_table(rows, title=f"lake at {lake.root}")


@app.command()
def forget(
    user: Annotated[int, typer.Option("--user", help="the user id to forget")],
    orphan_grace_hours: Annotated[
        int,
        typer.Option(
            min=0,
            help="files no commit mentions (a crashed writer's) are deleted once this old; "
            "younger ones may be a running writer's",
        ),
    ] = 24,
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Remove a user from every table holding user data and from saved model factors, for good.

    Deletes their rows, vacuums with zero retention and expires each table's log (no time
    travel to before), rewrites ALS user factors without them, and records the request in
    forget_requests without the id. Prints the request id: the requester's receipt.
    """
    from flixlake.lake.forget import ForgetIncompleteError, check_user_id, forget_user
    from flixlake.lake.store import lake_from_settings
    from flixlake.ops.forget import user_factor_dirs

    settings = settings_or_exit(env, home)
    try:
        check_user_id(user)
    except ValueError as exc:
        raise fail(str(exc)) from None
    lake = lake_from_settings(settings)
    incomplete: ForgetIncompleteError | None = None
    try:
        report = forget_user(
            lake,
            user,
            factor_dirs=user_factor_dirs(lake, settings.artifacts_root),
            orphan_grace_hours=orphan_grace_hours,
        )
    except ForgetIncompleteError as exc:
        incomplete, report = exc, exc.report
    print_table(
        [
            {
                "target": r.target,
                "rows removed": r.rows_removed,
                "files removed": r.files_removed,
                "log files removed": r.log_files_removed,
                "error": r.error or "",
            }
            for r in report.results
        ],
        title=f"forget request {report.request_id}",
    )
    if incomplete is not None:
        raise fail(str(incomplete), code=1)
    console.print(
        f"request {report.request_id}: {report.rows_removed:,} rows removed; "
        "recorded in forget_requests (without the user id)"
    )
