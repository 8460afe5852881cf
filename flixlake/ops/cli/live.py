"""Commands that run the live system's parts: broker, speed layer, service, simulator, demo."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from flixlake.ops.cli.common import (
    BootstrapOpt,
    EnvOpt,
    HomeOpt,
    console,
    err,
    fail,
    settings_or_exit,
)

app = typer.Typer()


@app.command()
def broker(
    port: Annotated[
        int | None, typer.Option(help="port (default: from kafka.bootstrap_servers)")
    ] = None,
    log_dir: Annotated[
        Path | None, typer.Option(help="Kafka's log folder (default: $FLIXLAKE_HOME/kafka)")
    ] = None,
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Run Apache Kafka (KRaft, one broker+controller) with its topics until Ctrl-C.

    Topics: kafka.topic (the MLiP log), serving.telemetry.served_topic (served answers) and
    serving.telemetry.log_topic (the service's own MLiP lines). The log folder is formatted on the
    first start and kept: a restart keeps every record.
    """
    from flixlake.contract.kafka import BrokerError, port_of
    from flixlake.ops.broker import serve_broker
    from flixlake.ops.jvm import JarsMissingError

    settings = settings_or_exit(env, home)
    # a service manager stops with SIGTERM: stop Kafka as on Ctrl-C, never leave it orphaned
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve_broker(
            port or port_of(settings.kafka.bootstrap_servers),
            settings.kafka.topic,
            settings.kafka.partitions,
            log_dir=log_dir or settings.home / "kafka",
            more_topics=[
                settings.serving.telemetry.served_topic,
                settings.serving.telemetry.log_topic,
            ],
            stop=stop,
        )
    except (BrokerError, JarsMissingError) as exc:
        raise fail(str(exc)) from None


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
    from flixlake.lake.store import lake_from_settings
    from flixlake.ops.spark import build_spark_session
    from flixlake.streaming.job import run_speed_layer

    settings = settings_or_exit(env, home)
    spark = build_spark_session(settings, app_name="flixlake-speed-layer")
    try:
        summary = run_speed_layer(
            spark,
            settings,
            lake_from_settings(settings),
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
    """Serve GET /recommend/<userid>, merging the published batch view with the speed views.

    The port listens before the service is even imported: no connection is ever refused while
    it starts (they wait, then get fallback answers until the batch view is loaded).
    """
    from flixlake.serving.listen import take

    settings = settings_or_exit(env, home)
    host = host or settings.serving.host
    port = port or settings.serving.port
    try:
        sock = take(host, port)  # bound by the launcher before this module was even imported
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

    from flixlake.serving.app import run_server

    run_server(settings, host=host, port=port, sock=sock)


@app.command()
def simulate(
    rate: Annotated[float, typer.Option(min=0.001, help="log lines per second")] = 50.0,
    users: Annotated[int, typer.Option(min=1, help="number of users (as in generate)")] = 2000,
    movies: Annotated[int, typer.Option(min=1, help="number of movies (as in generate)")] = 500,
    seed: Annotated[int, typer.Option(help="world seed (as in generate)")] = 7,
    stream_seed: Annotated[
        int | None,
        typer.Option(help="seed of the visits (default: --seed; another value: another day)"),
    ] = None,
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
    attack: Annotated[
        list[str] | None,
        typer.Option(
            help="run a labelled attack, e.g. push:accounts=30,after=5 or flood:requests=500 "
            "(repeatable; after = simulated minutes from the start)"
        ),
    ] = None,
    attack_labels: Annotated[
        Path | None, typer.Option(help="where to write the attacks' labels (JSON)")
    ] = None,
    bootstrap_servers: BootstrapOpt = None,
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Stream live MLiP log lines from the synthetic world into the Kafka topic at a steady rate."""
    from flixlake.contract.kafka import BrokerError
    from flixlake.sim.attacks import AttackSpecError, parse_attack
    from flixlake.sim.simulate import FaultSpecError, parse_faults
    from flixlake.sim.simulate import simulate as run_simulation

    settings = settings_or_exit(env, home)
    try:
        spec = parse_faults(faults) if faults else None
        attacks = [parse_attack(a) for a in attack or []]
    except (FaultSpecError, AttackSpecError) as exc:
        raise fail(str(exc)) from None
    if attacks and attack_labels is None:
        attack_labels = settings.home / "attack_labels.json"
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
            attacks=attacks,
            attack_labels=attack_labels,
            stream_seed=stream_seed,
        )
    except BrokerError as exc:
        raise fail(str(exc)) from None
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
    from flixlake.ops.demo import LiveOptions, run_demo, run_offline_demo

    settings = settings_or_exit(env, home)
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


@app.command()
def monitor(
    host: Annotated[
        str | None, typer.Option(help="bind address (default: monitoring.exporter_host)")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="port (default: monitoring.exporter_port, 9108)")
    ] = None,
    bootstrap_servers: BootstrapOpt = None,
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Export availability (from the log topic), model staleness and online quality to Prometheus."""
    from flixlake.monitoring.exporter import run_exporter

    settings = settings_or_exit(env, home)
    try:
        run_exporter(settings, host, port, bootstrap_servers)
    except OSError as exc:
        raise fail(f"cannot listen: {exc.strerror or exc}") from None


@app.command("alert-receiver")
def alert_receiver(
    port: Annotated[
        int | None, typer.Option(help="port (default: monitoring.receiver_port)")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="JSON-lines file (default: $FLIXLAKE_HOME/monitoring/alerts.jsonl)"),
    ] = None,
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Receive Alertmanager's webhook notifications on loopback and keep them (the on-call person)."""
    from flixlake.ops.alert_receiver import AlertReceiver

    settings = settings_or_exit(env, home)
    path = out or settings.home / "monitoring" / "alerts.jsonl"
    bind_port = port or settings.monitoring.receiver_port
    try:
        server = AlertReceiver(path).server("127.0.0.1", bind_port)
    except OSError as exc:
        raise fail(f"cannot listen on 127.0.0.1:{bind_port}: {exc.strerror or exc}") from None
    err.print(f"alert receiver on http://127.0.0.1:{bind_port}/alerts, keeping them in {path}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
