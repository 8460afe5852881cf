"""``make demo``: the whole live system on one machine, started the way a user starts each part.

1. a small synthetic history, generated once and ingested into bronze exactly once;
2. the broker (``flixlake broker``) with the log topic and the served-recommendations topic;
3. the speed layer (``spark-submit streaming/speed_layer.py``);
4. monitoring, when Debian's ``prometheus``, ``prometheus-alertmanager`` and
   ``prometheus-pushgateway`` are installed: the Pushgateway, Alertmanager, Prometheus (from
   ``monitoring/``), ``flixlake monitor`` (availability from the log, model staleness, online
   quality) and ``flixlake alert-receiver`` (the person on call: alerts land in
   ``$FLIXLAKE_HOME/monitoring/alerts.jsonl``);
5. the service (``flixlake serve``), answering with fallbacks from the catalog at once;
6. ``airflow standalone`` with this repository's ``dags/``, which runs ``flixlake_batch`` once
   for the history's last day (triggered and followed through Airflow's REST API); the service
   swaps the new model in, and a sample answer is shown;
7. the simulator (``flixlake simulate``) asking the service, for users the history knows, and
   logging each call as the course's infrastructure does;

then one status line every few seconds until Ctrl-C (or ``run_seconds``), which stops them all,
the last started first (:mod:`flixlake.ops.supervise`). Each child logs to
``$FLIXLAKE_HOME/demo/logs/<name>.log``; all get the same ``FLIXLAKE_HOME``, ``FLIXLAKE_ENV`` and
bootstrap servers. The broker (Apache Kafka) keeps its log under ``$FLIXLAKE_HOME/kafka`` and the
speed layer its checkpoint under ``$FLIXLAKE_HOME/checkpoints``, so a second demo resumes where the
first stopped: nothing is read twice or skipped.

Airflow runs with ``[scheduler] use_job_schedule = False``: only the run the demo triggers
executes (unpausing would otherwise also start the schedule's latest run, for today).

``--offline`` (:func:`run_offline_demo`) keeps the quick path without Kafka, Airflow or service:
generate, ingest, run the batch pipeline in this process, print metrics and a few users' lists.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from flixlake.batch.errors import GateFailedError
from flixlake.batch.ingest import ingest_paths
from flixlake.batch.pipeline import run_batch
from flixlake.config import ENV_VAR, HOME_VAR, PROJECT_ROOT, Settings
from flixlake.contract.kafka import BrokerError, create_topic, port_of
from flixlake.lake.store import lake_from_settings
from flixlake.ops.airflow_client import (
    AIRFLOW_USER,
    BATCH_DAG,
    AirflowApi,
    AirflowError,
    airflow_healthy,
    run_batch_dag,
)
from flixlake.ops.http import get_json, http_request
from flixlake.ops.monitoring_stack import (
    DEMO_INTERVALS,
    INSTALL_HINT,
    StackPorts,
    missing_binaries,
    start_stack,
)
from flixlake.ops.spark import build_spark_session
from flixlake.ops.speed_layer import start_speed_layer_process
from flixlake.ops.supervise import Child, ChildFailedError, Stopped, Supervisor, port_free
from flixlake.ops.terminal import LiveStatus, clock, print_batch_summary, print_sample_answer
from flixlake.sim.generate import generate_history

STATUS_EVERY_S = 5.0


# simulated time runs 6x faster than real time (a watched minute lasts 10 s): visits end sooner
# and new ones keep asking the service, instead of the first minute's visits filling the rate
SIM_MINUTE_SECONDS = 10.0


class DemoError(RuntimeError):
    """The demo cannot go on (a port is taken, a child failed, a task failed); says why."""


class PortTakenError(DemoError):
    """A port the demo needs is in use (another demo, Kafka, Airflow or service?)."""


@dataclass(frozen=True)
class LiveOptions:
    """What ``flixlake demo`` was asked for (history size, simulator rate, ports, duration)."""

    users: int
    movies: int
    days: int
    seed: int
    rate: float
    airflow_port: int
    serve_port: int
    run_seconds: float | None = None


# -- the synthetic history (both paths) ----------------------------------------------------------
def prepare_history(
    settings: Settings, console: Console, users: int, movies: int, days: int, seed: int, steps: int
) -> dict[str, Any]:
    """Generate the history once (it is deterministic) and ingest it exactly once; its summary."""
    data_dir = settings.home / "demo-data" / f"u{users}-m{movies}-d{days}-s{seed}"
    summary_file = data_dir / "summary.json"
    if summary_file.exists():
        generated: dict[str, Any] = json.loads(summary_file.read_text())
        console.print(f"1/{steps} synthetic history already in {data_dir}")
    else:
        console.print(
            f"1/{steps} generating {users:,} users × {movies:,} movies × {days} days into {data_dir}"
        )
        generated = generate_history(
            data_dir, n_users=users, n_movies=movies, days=days, seed=seed, bad_rate=0.002
        )
        summary_file.write_text(json.dumps(generated, default=str))
    lines = generated["lines"]
    console.print(
        f"    {lines['total']:,} log lines: {lines['watch']:,} watched minutes, "
        f"{lines['rate']:,} ratings, {lines['reco']:,} recommendation requests, "
        f"{lines['bad_total']:,} bad on purpose"
    )
    ingested = ingest_paths(lake_from_settings(settings), [data_dir], settings.ingest.chunk_lines)
    console.print(
        f"    ingested into bronze_events exactly once: {ingested.lines:,} new lines "
        f"({ingested.rejected:,} to quarantine), {ingested.already_ingested_lines:,} already there"
    )
    return generated


def _last_date(generated: dict[str, Any]) -> dt.date:
    return dt.date.fromisoformat(str(generated["last_date"]))


# -- the offline path ----------------------------------------------------------------------------
def run_offline_demo(
    settings: Settings, console: Console, users: int, movies: int, days: int, seed: int
) -> int:
    """Generate, ingest, batch in-process, show results; 0 ok, 3 when a gate refused to publish."""
    started = time.perf_counter()
    console.rule("[bold]flixlake demo (offline)")
    console.print(f"home: {settings.home}   env: {settings.env}")
    generated = prepare_history(settings, console, users, movies, days, seed, steps=3)
    lake = lake_from_settings(settings)
    run_date = _last_date(generated)
    console.print(f"2/3 batch pipeline for run date {run_date}")
    spark = build_spark_session(settings, app_name="flixlake-demo")
    try:
        results = run_batch(
            spark,
            lake,
            settings,
            run_date,
            on_start=lambda s: console.print(f"    ▶ {s.name}: {s.description}"),
            on_done=lambda r: console.print(f"      done in {r.seconds:.1f}s"),
        )
    except GateFailedError as exc:
        console.print(f"[red]gate refused to publish:[/red] {exc}")
        return 3
    finally:
        spark.stop()
    print_batch_summary({r.step.name: r.summary for r in results})

    console.print("3/3 a few users' recommendations (batch_recommendations, newest model):")
    version = next(r.summary for r in results if r.step.name == "publish")["model_version"]
    sample = lake.sql(
        "SELECT user_id, array_agg(movie_id ORDER BY rank) AS movies FROM batch_recommendations "
        f"WHERE model_version = '{version}' AND rank <= 20 GROUP BY user_id ORDER BY user_id LIMIT 3"
    ).to_pylist()
    for row in sample:
        console.print(f"    user {row['user_id']}: {', '.join(row['movies'][:8])}, …")
    console.print(
        f"done in {time.perf_counter() - started:.0f}s. Explore: flixlake tables | "
        f'flixlake sql "SELECT * FROM models" | flixlake lineage --model {version}'
    )
    return 0


# -- the live path -------------------------------------------------------------------------------
def run_demo(settings: Settings, console: Console, options: LiveOptions) -> int:
    """Run the live system until Ctrl-C or ``options.run_seconds``; 0 after a clean stop,
    1 when a part failed, 2 when a port it needs is taken."""

    def report_stop(result: Stopped) -> None:
        how = "killed" if result.killed else f"exit {result.exit_code}"
        strays = f", {result.strays} stray processes ended" if result.strays else ""
        console.print(f"    ■ {result.name} stopped ({how}) in {result.seconds:.1f}s{strays}")

    console.rule("[bold]flixlake demo")
    console.print(f"home: {settings.home}   env: {settings.env}")
    supervisor = Supervisor(settings.home / "demo" / "logs", on_stop=report_stop)
    code = 0
    with _stop_signals_interrupt():
        try:
            LiveDemo(settings, console, options, supervisor).run()
        except KeyboardInterrupt as exc:
            console.print(f"\n{exc or 'Ctrl-C'}: stopping everything the demo started")
        except (
            DemoError,
            AirflowError,
            ChildFailedError,
            BrokerError,
            OSError,
            HTTPException,
        ) as exc:
            console.print("[red]demo failed:[/red]", escape(str(exc)))
            code = 2 if isinstance(exc, PortTakenError) else 1
        finally:
            with _ignoring_stop_signals():  # a second Ctrl-C must not cut the clean-up short
                if supervisor.children:
                    console.print("stopping, the last started first")
                supervisor.stop_all()
    console.print(f"all stopped; logs in {supervisor.log_dir}")
    return code


class LiveDemo:
    """The six start-up steps and the status loop; children belong to ``supervisor``."""

    def __init__(
        self, settings: Settings, console: Console, options: LiveOptions, supervisor: Supervisor
    ) -> None:
        self.settings = settings
        self.console = console
        self.options = options
        self.supervisor = supervisor
        self.bin_dir = Path(sys.executable).parent  # the venv's: flixlake, airflow, spark-submit
        self.env = _child_env(settings, self.bin_dir)
        self.bootstrap = settings.kafka.bootstrap_servers  # the same for every child
        telemetry = settings.serving.telemetry
        self.topics = list(
            dict.fromkeys([settings.kafka.topic, telemetry.served_topic, telemetry.log_topic])
        )
        # the broker's log and the query's checkpoint both live under the home: a rerun resumes
        self.query = settings.streaming.query_name
        self.airflow_home = settings.home / "airflow"
        self.password_file = self.airflow_home / "simple_auth_manager_passwords.json.generated"
        self.airflow_url = f"http://127.0.0.1:{options.airflow_port}"  # loopback only
        self.service_url = f"http://localhost:{options.serve_port}"
        self.started = time.monotonic()
        self.monitoring = not missing_binaries()  # Debian's Prometheus stack is installed
        self.prometheus_url = f"http://127.0.0.1:{settings.monitoring.prometheus_port}"

    def run(self) -> None:
        """Start everything, then print status lines; returns at ``run_seconds``."""
        self.check_ports()
        generated = prepare_history(
            self.settings,
            self.console,
            self.options.users,
            self.options.movies,
            self.options.days,
            self.options.seed,
            steps=7,
        )
        run_date = _last_date(generated)
        self.phase(f"history ready for run date {run_date}")
        self.start_broker()
        stream = self.start_speed_layer()
        self.start_monitoring()
        service = self.start_service()
        api = self.start_airflow()
        run_batch_dag(api, self.console, self.settings, run_date, self.airflow_home)
        self.phase(f"{BATCH_DAG} done for {run_date}")
        self.supervisor.wait_ready(
            service,
            lambda: _service_loaded(self.service_url),
            timeout=180,
            what="serving the new batch view",
        )
        self.phase("the service swapped the new model in")
        print_sample_answer(self.console, self.settings, self.service_url)
        simulator = self.start_simulator()
        metrics = f"{self.service_url}/metrics"
        exporter = (
            f"http://127.0.0.1:{self.settings.monitoring.exporter_port}/metrics"
            if self.monitoring
            else None
        )
        self.watch(LiveStatus(stream.log_path, simulator.log_path, metrics, self.query, exporter))

    def check_ports(self) -> None:
        """Fail before starting anything when a port is taken (likely another demo)."""
        wanted = {
            port_of(self.bootstrap): "the broker (kafka.bootstrap_servers)",
            self.options.airflow_port: "Airflow (--airflow-port)",
            self.options.serve_port: "the service (--port or serving.port)",
        }
        if self.monitoring:
            m = self.settings.monitoring
            wanted |= {
                m.prometheus_port: "Prometheus (monitoring.prometheus_port)",
                m.alertmanager_port: "Alertmanager (monitoring.alertmanager_port)",
                m.pushgateway_port: "the Pushgateway (monitoring.pushgateway_port)",
                m.exporter_port: "flixlake monitor (monitoring.exporter_port)",
                m.receiver_port: "the alert receiver (monitoring.receiver_port)",
            }
        taken = [f"{port} for {what}" for port, what in wanted.items() if not port_free(port)]
        if taken:
            raise PortTakenError(
                f"port {', '.join(taken)} is in use: stop whatever listens there "
                "(`ss -ltnp` shows it) or choose other ports"
            )

    def phase(self, message: str) -> None:
        self.console.print(f"    ✓ {message}   [dim]{clock(time.monotonic() - self.started)}[/dim]")

    def start_broker(self) -> None:

        self.console.print(f"2/7 broker (flixlake broker) at {self.bootstrap}")
        broker = self.supervisor.start(
            "broker",
            [self._bin("flixlake"), "broker", "--port", str(port_of(self.bootstrap))],
            env=self.env,
            cwd=PROJECT_ROOT,
        )
        self.supervisor.wait_ready(broker, lambda: "broker ready at" in broker.log_tail(), 60)
        partitions = self.settings.kafka.partitions
        for topic in self.topics:  # idempotent: makes sure both topics are there and visible
            create_topic(self.bootstrap, topic, partitions)
        self.phase(f"topics {', '.join(self.topics)} ({partitions} partitions each)")

    def start_speed_layer(self) -> Child:
        self.console.print(
            f"3/7 speed layer: spark-submit streaming/speed_layer.py --query-name {self.query}"
        )
        stream = start_speed_layer_process(
            self.supervisor,
            self.settings,
            self.env,
            bootstrap_servers=self.bootstrap,
            query_name=self.query,
        )
        self.phase("streaming query started")
        return stream

    def start_airflow(self) -> AirflowApi:
        """``airflow standalone``; once healthy and showing the DAG, the API as its admin."""
        port = self.options.airflow_port
        self.console.print(f"6/7 Airflow: airflow standalone, UI on port {port}")
        airflow = self.supervisor.start(
            "airflow",
            [self._bin("airflow"), "standalone"],
            env=_airflow_env(self.env, self.airflow_home, port),
            cwd=PROJECT_ROOT,
            signal_to="child",  # it stops its scheduler, api-server, ... itself
        )
        url = self.airflow_url
        self.supervisor.wait_ready(airflow, lambda: airflow_healthy(url), 300, what="healthy")
        password = json.loads(self.password_file.read_text())[AIRFLOW_USER]
        api = AirflowApi(url, AIRFLOW_USER, password)
        self.supervisor.wait_ready(
            airflow, lambda: api.dag_parsed(BATCH_DAG), 300, what=f"showing {BATCH_DAG}"
        )
        self.phase(f"Airflow UI {url}   user {AIRFLOW_USER}")
        self.console.print(f"      (its password is in {self.password_file}; never printed)")
        return api

    def start_monitoring(self) -> None:
        """The Prometheus stack, the exporter and the alert receiver (when installed)."""
        if not self.monitoring:
            self.console.print(
                f"4/7 monitoring: skipped, {', '.join(missing_binaries())} not installed "
                f"(`{INSTALL_HINT}`)"
            )
            return
        m = self.settings.monitoring
        out = self.settings.home / "monitoring"
        self.console.print(
            f"4/7 monitoring: Prometheus {self.prometheus_url}, Alertmanager, Pushgateway, "
            "flixlake monitor, alert receiver"
        )
        receiver = self.supervisor.start(
            "alert-receiver",
            [self._bin("flixlake"), "alert-receiver", f"--out={out / 'alerts.jsonl'}"],
            env=self.env,
            cwd=PROJECT_ROOT,
        )
        self.supervisor.wait_ready(receiver, lambda: _listening(m.receiver_port, "/alerts"), 60)
        exporter = self.supervisor.start(
            "exporter",
            [self._bin("flixlake"), "monitor", f"--bootstrap-servers={self.bootstrap}"],
            env=self.env,
            cwd=PROJECT_ROOT,
        )
        self.supervisor.wait_ready(exporter, lambda: _listening(m.exporter_port, "/metrics"), 60)
        ports = StackPorts(
            prometheus=m.prometheus_port,
            alertmanager=m.alertmanager_port,
            pushgateway=m.pushgateway_port,
            service=self.options.serve_port,
            exporter=m.exporter_port,
            receiver=m.receiver_port,
            stream=self.settings.streaming.metrics_port or 9109,
        )
        start_stack(self.supervisor, out, ports, DEMO_INTERVALS)
        self.phase(f"Prometheus {self.prometheus_url}   alerts land in {out / 'alerts.jsonl'}")

    def start_service(self) -> Child:
        port = self.options.serve_port
        self.console.print(f"5/7 service: flixlake serve --port {port}")
        service = self.supervisor.start(
            "service",
            [self._bin("flixlake"), "serve", f"--port={port}"],
            env=self.env,
            cwd=PROJECT_ROOT,
            signal_to="child",  # uvicorn drains, then flushes and stops its telemetry shipper
        )
        self.supervisor.wait_ready(
            service, lambda: _listening(port, "/health/live"), timeout=60, what="listening"
        )
        self.phase(
            f"service {self.service_url}/recommend/<userid>   /health/ready   /metrics "
            "(fallbacks until a model is published)"
        )
        return service

    def start_simulator(self) -> Child:
        options = self.options
        self.console.print(
            f"7/7 simulator: flixlake simulate --rate {options.rate:g} "
            f"--minute-seconds {SIM_MINUTE_SECONDS:g}, asking the service"
        )
        simulator = self.supervisor.start(
            "simulator",
            [
                self._bin("flixlake"),
                "simulate",
                f"--rate={options.rate:g}",
                f"--minute-seconds={SIM_MINUTE_SECONDS:g}",
                f"--users={options.users}",
                f"--movies={options.movies}",
                f"--seed={options.seed}",
                f"--serve-url={self.service_url}",
                f"--bootstrap-servers={self.bootstrap}",
            ],
            env=self.env,
            cwd=PROJECT_ROOT,
        )
        self.supervisor.wait_ready(simulator, lambda: "sent " in simulator.log_tail(), 120)
        self.phase("simulator streaming")
        return simulator

    def watch(self, status: LiveStatus) -> None:
        """Where everything is, then a status line every few seconds; raises if a child died."""
        console, options = self.console, self.options
        console.rule(f"[bold]up in {clock(time.monotonic() - self.started)}")
        console.print(
            f"  Airflow UI  {self.airflow_url}   user {AIRFLOW_USER}, "
            f"password in {self.password_file}"
        )
        console.print(
            f"  service     curl {self.service_url}/recommend/<userid>   {self.service_url}/metrics"
        )
        console.print(f"  broker      {self.bootstrap}   topics {', '.join(self.topics)}")
        if self.monitoring:
            console.print(
                f"  monitoring  {self.prometheus_url}/alerts   alerts land in "
                f"{self.settings.home / 'monitoring' / 'alerts.jsonl'}"
            )
        console.print(f"  logs        {self.supervisor.log_dir}/<name>.log")
        until = "until Ctrl-C" if options.run_seconds is None else f"for {options.run_seconds:g}s"
        legend = LiveStatus.LEGEND + (LiveStatus.AVAILABILITY_LEGEND if self.monitoring else "")
        console.print(f"  status every {STATUS_EVERY_S:g}s {until}: {legend}")
        watch_started = time.monotonic()
        end = None if options.run_seconds is None else watch_started + options.run_seconds
        while end is None or time.monotonic() < end:
            time.sleep(
                STATUS_EVERY_S
                if end is None
                else max(0.0, min(STATUS_EVERY_S, end - time.monotonic()))
            )
            died = self.supervisor.exited()
            if died:
                raise DemoError(
                    f"{died[0].name} exited with code {died[0].exit_code()}; "
                    f"log {died[0].log_path}:\n{died[0].log_tail()}"
                )
            console.print(f"  {clock(time.monotonic() - watch_started)}  {status.line()}")
        console.print(f"--run-seconds {options.run_seconds:g} reached")

    def _bin(self, name: str) -> str:
        return str(self.bin_dir / name)


def _child_env(settings: Settings, bin_dir: Path) -> dict[str, str]:
    """What every child gets: this lake and config, the venv's Python for Spark, its bin first."""
    python = str(bin_dir / "python")
    return {
        **os.environ,
        HOME_VAR: str(settings.home),
        ENV_VAR: settings.env,
        "PYSPARK_PYTHON": python,
        "PYSPARK_DRIVER_PYTHON": python,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _airflow_env(env: dict[str, str], airflow_home: Path, port: int) -> dict[str, str]:
    """``airflow standalone`` for a 2-core machine, on loopback, with the repo's DAGs; only
    triggered runs."""
    return {
        **env,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "1",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__API__HOST": "127.0.0.1",  # loopback only: the demo's admin is not for the LAN
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
    }


@contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP (terminal closed) all end the demo the same clean way."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(
            "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        )

    previous = {
        sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _ignoring_stop_signals() -> Iterator[None]:
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in stops}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _listening(port: int, path: str) -> bool:
    """True once 127.0.0.1:<port><path> answers 200."""
    try:
        return http_request("GET", f"http://127.0.0.1:{port}{path}")[0] == 200
    except OSError:
        return False


def _service_loaded(service_url: str) -> bool:
    health = get_json(f"{service_url}/health")
    return bool(health and health.get("batch_views"))
