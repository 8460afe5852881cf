"""Commands of the batch layer: run the pipeline, trace lineage, roll a model back."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from flixlake.ops.cli.common import EnvOpt, HomeOpt, console, fail, print_table, settings_or_exit
from flixlake.ops.terminal import print_batch_summary

app = typer.Typer()


@app.command()
def batch(
    run_date: Annotated[
        str, typer.Option("--run-date", help="logical date YYYY-MM-DD (the data cutoff)")
    ],
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Run the whole batch pipeline once without Airflow: compact → gate → train → evaluate → register → publish."""
    from flixlake.batch.errors import GateFailedError, TrainingError
    from flixlake.batch.pipeline import run_batch
    from flixlake.lake.runs import MissingStepError, parse_run_date
    from flixlake.lake.store import MissingTableError, lake_from_settings
    from flixlake.ops.spark import build_spark_session

    settings = settings_or_exit(env, home)
    try:
        date = parse_run_date(run_date)
    except ValueError as exc:
        raise fail(str(exc)) from None
    spark = build_spark_session(settings, app_name=f"flixlake-batch-{date}")
    try:
        results = run_batch(
            spark,
            lake_from_settings(settings),
            settings,
            date,
            on_start=lambda s: console.print(f"[bold]▶ {s.name}[/bold]: {s.description}"),
            on_done=lambda r: console.print(f"  ✓ {r.step.name} in {r.seconds:.1f}s"),
        )
    except GateFailedError as exc:
        raise fail(f"gate failed, nothing published: {exc}", code=3) from None
    except TrainingError as exc:
        raise fail(f"training failed, nothing published: {exc}", code=4) from None
    except (MissingTableError, MissingStepError, ValueError) as exc:
        raise fail(str(exc)) from None
    finally:
        spark.stop()
    print_batch_summary({r.step.name: r.summary for r in results})


@app.command()
def lineage(
    model: Annotated[
        str | None, typer.Option("--model", help="model version, e.g. als-20261122-ab12cd34")
    ] = None,
    request: Annotated[
        str | None,
        typer.Option("--request", help="a served answer's request id (its X-Request-Id header)"),
    ] = None,
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Print provenance: of a served answer (--request), a model (--model), or the current model.

    A model's: input Delta versions and the commits that wrote them, code version, libraries,
    metrics, quality checks. A request's: the served answer, then its model's lineage.
    """
    from flixlake.lake.registry import current_published_model, model_lineage, request_lineage
    from flixlake.lake.store import MissingTableError, lake_from_settings

    if model is not None and request is not None:
        raise fail("give --model or --request, not both")
    lake = lake_from_settings(settings_or_exit(env, home))
    try:
        if request is not None:
            info = request_lineage(lake, request)
        else:
            if model is None:
                current = current_published_model(lake)
                if current is None:
                    raise fail("no published model yet; pass --model")
                model = str(current["model_version"])
            info = model_lineage(lake, model)
    except (MissingTableError, KeyError, LookupError) as exc:
        raise fail(str(exc)) from None
    console.print_json(json.dumps(info, default=str))


@app.command()
def rollback(
    model: Annotated[str, typer.Option("--model", help="a previously published model version")],
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Make an earlier published model the current batch view again."""
    from flixlake.lake.registry import rollback_to
    from flixlake.lake.store import lake_from_settings

    lake = lake_from_settings(settings_or_exit(env, home))
    try:
        rollback_to(lake, model)
    except (LookupError, ValueError) as exc:
        raise fail(str(exc)) from None
    console.print(f"current model is now {model}")


@app.command()
def maintain(
    run_date: Annotated[
        str, typer.Option("--run-date", help="the last complete day, YYYY-MM-DD (what is closed)")
    ],
    table: Annotated[
        list[str] | None,
        typer.Option(
            "--table", help="only this table (repeatable; default every table + artifacts)"
        ),
    ] = None,
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Table lifecycle: retention, pruning of old model versions, compaction, vacuum, log cleanup.

    No Spark. One maintenance_runs row per table (files, bytes, log length before and after);
    exit 1 when a table's maintenance failed (its row has the error), the others still ran.
    """
    from flixlake.config import ConfigError
    from flixlake.lake.lifecycle import MaintenanceError, run_maintenance
    from flixlake.lake.runs import parse_run_date
    from flixlake.lake.store import lake_from_settings

    settings = settings_or_exit(env, home)
    try:
        day = parse_run_date(run_date)
        rows = run_maintenance(lake_from_settings(settings), settings, day, tables=table or None)
    except (ValueError, ConfigError) as exc:
        raise fail(str(exc)) from None
    except MaintenanceError as exc:
        raise fail(str(exc), code=1) from None
    print_table(
        [
            {
                "table": r["table_name"],
                "files": f"{r['files_before']:,} -> {r['files_after']:,} ({r['live_files_after']:,} live)",
                "MB": f"{r['bytes_before'] / 1e6:,.2f} -> {r['bytes_after'] / 1e6:,.2f}",
                "log commits": f"{r['log_files_before']:,} -> {r['log_files_after']:,}",
                "compacted": r["files_compacted"],
                "vacuumed": r["files_vacuumed"],
                "pruned": ", ".join(r["pruned"]) or "-",
            }
            for r in rows
        ],
        title=f"maintenance for {day}",
    )
