"""The ``flixlake`` command: generate, ingest, query, run the batch pipeline, trace lineage.

State lives under ``$FLIXLAKE_HOME`` (default ``./var``); ``$FLIXLAKE_ENV`` picks ``conf/<env>.yaml``.
Run ``flixlake COMMAND --help`` for each command's options.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flixlake.config import ConfigError, Settings, load_settings

app = typer.Typer(
    help="flixlake: movie recommendations on Kafka, Spark and Delta Lake.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err = Console(stderr=True)

EnvOpt = Annotated[
    str | None, typer.Option("--env", help="config environment (default $FLIXLAKE_ENV or local)")
]
BootstrapOpt = Annotated[str | None, typer.Option(help="override kafka.bootstrap_servers")]
HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="state folder (default $FLIXLAKE_HOME or ./var)")
]


def _settings(env: str | None, home: Path | None) -> Settings:
    try:
        return load_settings(env, home=home)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def _print_table(rows: list[dict[str, Any]], title: str | None = None) -> None:
    table = Table(title=title, show_lines=False)
    if not rows:
        console.print("(no rows)")
        return
    for column in rows[0]:
        table.add_column(str(column))
    for row in rows:
        table.add_row(*[_cell(v) for v in row.values()])
    console.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(map(str, value[:5])) + (" …" if len(value) > 5 else "")
    return "" if value is None else str(value)


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
) -> None:
    """Write a synthetic history in the exact MLiP log format (deterministic per seed)."""
    from flixlake.generate import generate_history

    end = dt.date.fromisoformat(end_date) if end_date else None
    with _progress() as progress:
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
        )
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
    from flixlake.ingest import expand_paths, ingest_paths
    from flixlake.lake import Lake

    settings = _settings(env, home)
    try:
        logs, _ = expand_paths(paths)
    except FileNotFoundError as exc:
        raise _fail(str(exc)) from None
    total = sum(p.stat().st_size for p in logs)
    with _progress() as progress:
        task = progress.add_task("ingesting", total=None)
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            progress.update(task, completed=done, description=f"ingesting ({total / 1e6:.0f} MB)")

        summary = ingest_paths(
            Lake(settings.lake_root), paths, settings.ingest.chunk_lines, on_chunk=advance
        )
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
    from flixlake.lake import Lake

    settings = _settings(env, home)
    try:
        result = Lake(settings.lake_root).sql(query)
    except Exception as exc:  # DataFusion reports planning/parse errors as generic exceptions
        raise _fail(f"query failed: {exc}") from None
    rows = result.to_pylist()
    if output == "json":
        console.print_json(json.dumps(rows, default=str))
    elif output == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(result, sys.stdout.buffer)
    else:
        _print_table(rows)


@app.command()
def tables(env: EnvOpt = None, home: HomeOpt = None) -> None:
    """List the lake's tables: owner, Delta version, row count."""
    from flixlake.lake import Lake
    from flixlake.tables import ALL_TABLES

    lake = Lake(_settings(env, home).lake_root)
    rows = []
    for name, spec in ALL_TABLES.items():
        exists = lake.exists(name)
        rows.append(
            {
                "table": name,
                "version": lake.version(name) if exists else None,
                "rows": lake.table(name).count() if exists else None,
                "owner": spec.owner,
            }
        )
    _print_table(rows, title=f"lake at {lake.root}")


@app.command()
def batch(
    run_date: Annotated[
        str, typer.Option("--run-date", help="logical date YYYY-MM-DD (the data cutoff)")
    ],
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Run the whole batch pipeline once without Airflow: compact → gate → train → evaluate → register → publish."""
    from flixlake.entrypoint import GateFailedError
    from flixlake.lake import Lake, MissingTableError
    from flixlake.pipeline import run_batch
    from flixlake.runs import MissingStepError, parse_run_date
    from flixlake.spark import build_spark_session

    settings = _settings(env, home)
    try:
        date = parse_run_date(run_date)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    spark = build_spark_session(settings, app_name=f"flixlake-batch-{date}")
    try:
        results = run_batch(
            spark,
            Lake(settings.lake_root),
            settings,
            date,
            on_start=lambda s: console.print(f"[bold]▶ {s.name}[/bold]: {s.description}"),
            on_done=lambda r: console.print(f"  ✓ {r.step.name} in {r.seconds:.1f}s"),
        )
    except GateFailedError as exc:
        raise _fail(f"gate failed, nothing published: {exc}", code=3) from None
    except (MissingTableError, MissingStepError, ValueError) as exc:
        raise _fail(str(exc)) from None
    finally:
        spark.stop()
    print_batch_summary({r.step.name: r.summary for r in results})


def print_batch_summary(summaries: dict[str, dict[str, Any]]) -> None:
    """Headline numbers of one batch run."""
    evaluation = summaries.get("evaluate", {})
    k = evaluation.get("k", 20)
    rows = []
    for name in ("als", "popularity"):
        metrics = evaluation.get(name) or {}
        rows.append(
            {
                "recommender": name,
                **{f"{m}@{k}": metrics.get(m) for m in ("ndcg", "precision", "recall", "map")},
                "coverage": metrics.get("coverage"),
                "users": metrics.get("n_users"),
            }
        )
    _print_table(rows, title="offline evaluation on the held-out window")
    publish = summaries.get("publish", {})
    train = summaries.get("train", {})
    console.print(f"model {train.get('model_version')} params {train.get('params')}")
    console.print(f"published: {publish.get('published')}  {publish.get('reason', '')}")


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
    from flixlake.lake import Lake, MissingTableError
    from flixlake.registry import current_published_model, model_lineage, request_lineage

    if model is not None and request is not None:
        raise _fail("give --model or --request, not both")
    lake = Lake(_settings(env, home).lake_root)
    try:
        if request is not None:
            info = request_lineage(lake, request)
        else:
            if model is None:
                current = current_published_model(lake)
                if current is None:
                    raise _fail("no published model yet; pass --model")
                model = str(current["model_version"])
            info = model_lineage(lake, model)
    except (MissingTableError, KeyError, LookupError) as exc:
        raise _fail(str(exc)) from None
    console.print_json(json.dumps(info, default=str))


@app.command()
def rollback(
    model: Annotated[str, typer.Option("--model", help="a previously published model version")],
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Make an earlier published model the current batch view again."""
    from flixlake.lake import Lake
    from flixlake.registry import rollback_to

    lake = Lake(_settings(env, home).lake_root)
    try:
        rollback_to(lake, model)
    except (LookupError, ValueError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"current model is now {model}")


@app.command()
def broker(
    port: Annotated[
        int | None, typer.Option(help="port (default: from kafka.bootstrap_servers)")
    ] = None,
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Run the embedded Kafka-compatible broker (tansu) with its topics until Ctrl-C.

    Topics: kafka.topic (the MLiP log) and serving.telemetry.served_topic (served answers).
    """
    from flixlake.broker import BrokerError, port_of, serve_broker

    settings = _settings(env, home)
    try:
        serve_broker(
            port or port_of(settings.kafka.bootstrap_servers),
            settings.kafka.topic,
            settings.kafka.partitions,
            log_path=settings.home / "broker.log",
            more_topics=[settings.serving.telemetry.served_topic],
        )
    except BrokerError as exc:
        raise _fail(str(exc)) from None


@app.command()
def stream(
    seconds: Annotated[
        float | None, typer.Option(help="stop after this many seconds (default: run until Ctrl-C)")
    ] = None,
    bootstrap_servers: BootstrapOpt = None,
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Run the speed layer: topic → bronze/quarantine exactly once → speed views."""
    from flixlake.lake import Lake
    from flixlake.spark import build_spark_session
    from flixlake.speed import run_speed_layer

    settings = _settings(env, home)
    spark = build_spark_session(settings, app_name="flixlake-speed-layer")
    try:
        summary = run_speed_layer(
            spark,
            settings,
            Lake(settings.lake_root),
            timeout=seconds,
            bootstrap_servers=bootstrap_servers,
        )
    finally:
        spark.stop()
    console.print_json(json.dumps(summary, default=str))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (default: serving.host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: serving.port, 8082)")] = None,
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Serve GET /recommend/<userid>, merging the published batch view with the speed views."""
    from serving.app import run_server

    run_server(_settings(env, home), host=host, port=port)


@app.command()
def simulate(
    rate: Annotated[float, typer.Option(min=0.001, help="log lines per second")] = 50.0,
    users: Annotated[int, typer.Option(min=1, help="number of users (as in generate)")] = 2000,
    movies: Annotated[int, typer.Option(min=1, help="number of movies (as in generate)")] = 500,
    seed: Annotated[int, typer.Option(help="world seed (as in generate)")] = 7,
    serve_url: Annotated[
        str | None, typer.Option(help="ask GET URL/recommend/<user> on visits (feedback loop)")
    ] = None,
    faults: Annotated[
        str | None,
        typer.Option(help="e.g. bad=0.01,out_of_order=0.01,burst=0.05,unknown=0.01,poison=0.001"),
    ] = None,
    events: Annotated[
        int | None, typer.Option(min=0, help="stop after this many lines (default: Ctrl-C)")
    ] = None,
    minute_seconds: Annotated[
        float,
        typer.Option(
            min=1.0,
            help="wall-clock seconds a watched minute lasts (60: real time; less: more visits)",
        ),
    ] = 60.0,
    bootstrap_servers: BootstrapOpt = None,
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Stream live MLiP log lines from the synthetic world into the Kafka topic at a steady rate."""
    from flixlake.broker import BrokerError
    from flixlake.simulate import FaultSpecError, parse_faults
    from flixlake.simulate import simulate as run_simulation

    settings = _settings(env, home)
    try:
        spec = parse_faults(faults) if faults else None
    except FaultSpecError as exc:
        raise _fail(str(exc)) from None
    bootstrap = bootstrap_servers or settings.kafka.bootstrap_servers
    err.print(f"simulating {rate:g} lines/s into {settings.kafka.topic!r} at {bootstrap}")

    def report(p: dict[str, Any]) -> None:
        limited = " (user-limited: more --users needed)" if p["user_limited"] else ""
        err.print(f"sent {p['sent']:,} lines, {p['rate']:.0f}/s{limited}")

    try:
        summary = run_simulation(
            bootstrap,
            settings.kafka.topic,
            rate=rate,
            n_users=users,
            n_movies=movies,
            seed=seed,
            events=events,
            faults=spec,
            serve_url=serve_url,
            progress=report,
            minute_seconds=minute_seconds,
        )
    except BrokerError as exc:
        raise _fail(str(exc)) from None
    console.print_json(json.dumps(summary, default=str))


@app.command()
def demo(
    users: Annotated[
        int, typer.Option(min=10, help="users in the history and the simulator")
    ] = 3000,
    movies: Annotated[int, typer.Option(min=20, help="movies in the history")] = 600,
    days: Annotated[int, typer.Option(min=8, help="days of history")] = 30,
    seed: Annotated[int, typer.Option(help="world seed (history and simulator)")] = 7,
    offline: Annotated[
        bool,
        typer.Option(
            "--offline", help="no broker, Airflow or service: generate, ingest, batch in-process"
        ),
    ] = False,
    run_seconds: Annotated[
        float | None,
        typer.Option(min=0, help="stop everything after this long live (default: Ctrl-C)"),
    ] = None,
    rate: Annotated[float, typer.Option(min=0.1, help="simulator log lines per second")] = 200.0,
    airflow_port: Annotated[int, typer.Option(help="Airflow UI and API port")] = 8080,
    port: Annotated[int | None, typer.Option(help="service port (default: serving.port)")] = None,
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """The whole system on this machine: broker, speed layer, Airflow, service, simulator.

    Ingests a small synthetic history (generated once), starts the broker,
    the streaming job and `airflow standalone` (UI on --airflow-port), runs
    flixlake_batch through Airflow for the history's last day, starts the
    service and the simulator, then prints a status line every few seconds.
    Ctrl-C stops everything it started. Logs: $FLIXLAKE_HOME/demo/logs/.
    """
    from flixlake.demo import LiveOptions, run_demo, run_offline_demo

    settings = _settings(env, home)
    if offline:
        code = run_offline_demo(settings, console, users, movies, days, seed)
    else:
        options = LiveOptions(
            users=users,
            movies=movies,
            days=days,
            seed=seed,
            rate=rate,
            airflow_port=airflow_port,
            serve_port=port or settings.serving.port,
            run_seconds=run_seconds,
        )
        code = run_demo(settings, console, options)
    raise typer.Exit(code)


experiment_app = typer.Typer(
    help="Online evaluation of served answers and A/B comparison of experiment variants.",
    no_args_is_help=True,
)
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("evaluate")
def experiment_evaluate(
    until: Annotated[
        str | None, typer.Option(help="evaluate served hours complete by this ISO time (UTC)")
    ] = None,
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Recompute watch-through of recent served hours now, as the flixlake_online DAG does."""
    from flixlake.entrypoint import parse_until
    from flixlake.lake import Lake, MissingTableError
    from flixlake.online import run_online_evaluation
    from flixlake.spark import build_spark_session

    settings = _settings(env, home)
    try:
        end = parse_until(until)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    spark = build_spark_session(settings, app_name="flixlake-online-evaluation")
    try:
        summary = run_online_evaluation(spark, Lake(settings.lake_root), settings, end)
    except MissingTableError as exc:
        raise _fail(str(exc)) from None
    finally:
        spark.stop()
    if "skipped" in summary:
        err.print(f"[yellow]{summary['skipped']}[/yellow]")
    console.print_json(json.dumps(summary, default=str))


@experiment_app.command("report")
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
    """Compare an experiment's variants: watch-through, intervals, z-tests; write an HTML report."""
    from flixlake.entrypoint import parse_timestamp
    from flixlake.experiments import NAME_PATTERN
    from flixlake.lake import Lake
    from flixlake.online import NoEvaluationsError, compare_variants, experiment_rows
    from flixlake.online_report import result_rows, write_experiment_report

    settings = _settings(env, home)
    configured = settings.serving.experiment
    name = experiment or configured.name
    if not re.fullmatch(NAME_PATTERN, name):
        raise _fail(f"--experiment {name!r} must match {NAME_PATTERN}")
    try:
        start = parse_timestamp(since, "--since") if since else None
        end = parse_timestamp(until, "--until") if until else None
        rows = experiment_rows(Lake(settings.lake_root), name, start, end)
    except (NoEvaluationsError, ValueError) as exc:
        raise _fail(str(exc)) from None
    try:
        results = compare_variants(
            rows,
            control or configured.variants[0].name,
            settings.online.confidence,
            settings.online.min_served,
        )
    except LookupError as exc:
        raise _fail(f"{exc}; pass --control") from None
    requested = f"{since or 'the first hour'} to {until or 'the last hour'}"
    table = Table(
        title=f"experiment {name}: watch-through ({requested})",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        collapse_padding=True,
    )
    rows_text = result_rows(results)
    for column in rows_text[0]:
        table.add_column(column, overflow="fold")  # a narrow terminal splits numbers, never cuts
    for row in rows_text:
        table.add_row(*row.values())
    console.print(table)
    console.print(
        f"An answer converts when its user watches one of its movies within "
        f"{settings.online.watch_window}; variants (or a control) with fewer than "
        f"{settings.online.min_served} answers are not tested."
    )
    page = write_experiment_report(
        out or settings.artifacts_root / "experiments" / name,
        name,
        results,
        rows,
        settings.online,
        requested,
    )
    console.print(f"report: {page}", soft_wrap=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,} lines"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


if __name__ == "__main__":
    app()
