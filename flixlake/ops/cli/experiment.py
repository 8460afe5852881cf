"""``flixlake experiment``: online evaluation and the A/B report."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from flixlake.ops.cli.common import EnvOpt, HomeOpt, console, err, fail, settings_or_exit

app = typer.Typer(
    help="Online evaluation of served answers and A/B comparison of experiment variants.",
    no_args_is_help=True,
)


@app.command("evaluate")
def experiment_evaluate(
    until: Annotated[
        str | None, typer.Option(help="evaluate served hours complete by this ISO time (UTC)")
    ] = None,
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Recompute watch-through of recent served hours now, as the flixlake_online DAG does."""
    from flixlake.experiments.online import run_online_evaluation
    from flixlake.lake.store import MissingTableError, lake_from_settings
    from flixlake.ops.jobs import parse_until
    from flixlake.ops.spark import build_spark_session

    settings = settings_or_exit(env, home)
    try:
        end = parse_until(until)
    except ValueError as exc:
        raise fail(str(exc)) from None
    spark = build_spark_session(settings, app_name="flixlake-online-evaluation")
    try:
        summary = run_online_evaluation(spark, lake_from_settings(settings), settings, end)
    except MissingTableError as exc:
        raise fail(str(exc)) from None
    finally:
        spark.stop()
    if "skipped" in summary:
        err.print(f"[yellow]{summary['skipped']}[/yellow]")
    console.print_json(json.dumps(summary, default=str))


@app.command("report")
def experiment_report(
    since: Annotated[str | None, typer.Option(help="first served hour, ISO time (UTC)")] = None,
    until: Annotated[str | None, typer.Option(help="end of the range (exclusive), ISO")] = None,
    experiment: Annotated[
        str | None, typer.Option(help="experiment name (default: serving.experiment.name)")
    ] = None,
    control: Annotated[
        str | None, typer.Option(help="control variant (default: the first configured one)")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="report folder (default: <artifacts>/experiments/<experiment>)"),
    ] = None,
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Compare an experiment's variants per user, with an always-valid sequential test; HTML too."""
    from flixlake.experiments.report import result_rows, write_experiment_report
    from flixlake.experiments.routing import NAME_PATTERN
    from flixlake.experiments.stats import NoEvaluationsError, analyse_experiment, experiment_rows
    from flixlake.lake.store import lake_from_settings
    from flixlake.ops.jobs import parse_timestamp

    settings = settings_or_exit(env, home)
    online = settings.online
    configured = settings.serving.experiment
    name = experiment or configured.name
    if not re.fullmatch(NAME_PATTERN, name):
        raise fail(f"--experiment {name!r} must match {NAME_PATTERN}")
    try:
        start = parse_timestamp(since, "--since") if since else None
        end = parse_timestamp(until, "--until") if until else None
        rows = experiment_rows(lake_from_settings(settings), name, start, end)
    except (NoEvaluationsError, ValueError) as exc:
        raise fail(str(exc)) from None
    try:
        analysis = analyse_experiment(
            rows,
            control or configured.variants[0].name,
            online.confidence,
            online.min_users,
            online.mixture_sd,
        )
    except LookupError as exc:
        raise fail(f"{exc}; pass --control") from None
    requested = f"{since or 'the first hour'} to {until or 'the last hour'}"
    table = Table(
        title=f"experiment {name}: watch-through per user ({requested})",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        collapse_padding=True,
    )
    rows_text = result_rows(analysis.results)
    for column in rows_text[0]:
        table.add_column(column, overflow="fold")  # a narrow terminal splits numbers, never cuts
    for row in rows_text:
        table.add_row(*row.values())
    console.print(table)
    console.print(
        f"An answer converts when its user watches one of its movies within "
        f"{online.watch_window}. Users are the unit (intervals: delta method over users; deff: "
        f"variance vs. counting answers). Each variant is tested against the control with an "
        f"always-valid sequential test (mSPRT, mixture sd {online.mixture_sd:g}) at every one of "
        f"the {len(analysis.hours)} served hours: the p-value holds however often this report "
        f"is read. Arms with fewer than {online.min_users} users are not tested."
    )
    if analysis.users_in_several_variants:
        err.print(
            f"[yellow]{analysis.users_in_several_variants:,} users were served by more than one "
            "variant (was the split changed?); each variant counts their answers.[/yellow]"
        )
    page = write_experiment_report(
        out or settings.artifacts_root / "experiments" / name,
        name,
        analysis,
        rows,
        online,
        requested,
    )
    console.print(f"report: {page}", soft_wrap=True)


@app.command("feedback")
def experiment_feedback(
    experiment: Annotated[
        str | None, typer.Option(help="experiment name (default: serving.experiment.name)")
    ] = None,
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Feedback loops: concentration and popularity of what was served and watched, per retrain."""
    from flixlake.audit.feedback import (
        NoCyclesError,
        feedback_audit,
        result_rows,
        retrain_cycles,
    )
    from flixlake.experiments.routing import NAME_PATTERN
    from flixlake.lake.registry import model_rows
    from flixlake.lake.store import MissingTableError, lake_from_settings
    from flixlake.ops.spark import build_spark_session

    settings = settings_or_exit(env, home)
    name = experiment or settings.serving.experiment.name
    if not re.fullmatch(NAME_PATTERN, name):
        raise fail(f"--experiment {name!r} must match {NAME_PATTERN}")
    lake = lake_from_settings(settings)
    if not retrain_cycles(model_rows(lake)):  # say so before starting Spark
        raise fail(f"no published model under {lake.root}: no retrain cycle to audit")
    spark = build_spark_session(settings, app_name="flixlake-feedback-audit")
    try:
        audit = feedback_audit(spark, lake, name, head_share=settings.audit.head_share)
    except (NoCyclesError, MissingTableError) as exc:
        raise fail(str(exc)) from None
    finally:
        spark.stop()
    rows = result_rows(audit)
    if not rows:
        raise fail(f"no answers of experiment {name!r} since the first published model")
    table = Table(
        title=f"experiment {name}: feedback loop per retrain cycle",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        collapse_padding=True,
    )
    for column in rows[0]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row.values())
    console.print(table)
    console.print(
        f"A cycle is the time one model was the current published one. served: every movie "
        f"slot shown; personalised: slots of answers a model gave a user it knows; watched: "
        f"(user, movie) pairs watched for the first time (recommended: share shown to that user "
        f"before). Popularity is the share of the {audit.reference_users:,} users before the "
        f"first cycle who watched the movie; the long tail is all but their most-watched "
        f"{settings.audit.head_share:.0%} ({audit.head_size} of {audit.catalog_size} movies). A tightening "
        f"loop: Gini and popularity rise, coverage and long tail fall, cycle after cycle."
    )
