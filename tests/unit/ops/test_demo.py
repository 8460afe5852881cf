"""The live demo's pieces that need no live system: following a DAG run, the status line."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from rich.console import Console

from flixlake.batch.pipeline import BATCH_STEPS
from flixlake.config import Settings
from flixlake.lake.runs import write_manifest
from flixlake.ops.airflow_client import AirflowApi, AirflowError, run_batch_dag
from flixlake.ops.demo import _airflow_env
from flixlake.ops.terminal import LiveStatus
from flixlake.serving.monitoring import ServingMetrics
from flixlake.streaming.harness import BatchReport

RUN_DATE = dt.date(2026, 11, 22)
TASKS = tuple(step.task_id for step in BATCH_STEPS)


class ScriptedAirflow(AirflowApi):
    """Answers the REST calls from a script: each GET of the run returns its next state."""

    def __init__(self, existing: list[dict[str, Any]], run_states: list[str], failing: str = ""):
        super().__init__("http://airflow.invalid", "admin", "secret")
        self.existing = existing
        self.run_states = run_states
        self.failing = failing
        self.calls: list[tuple[str, str, Any]] = []

    def call(self, method: str, path: str, body: Any = None) -> Any:
        self.calls.append((method, path.split("?")[0], body))
        if method == "GET" and path.endswith("/taskInstances"):
            state = self.run_states[0]
            return {"task_instances": [self._task(t, state) for t in TASKS]}
        if method == "GET" and "?" in path:
            return {"dag_runs": self.existing}
        if method == "GET":
            return {"state": self.run_states.pop(0)}
        return {}

    def _task(self, task_id: str, run_state: str) -> dict[str, Any]:
        state: str | None
        if run_state == "success":
            state = "success"
        elif task_id == self.failing and run_state == "failed":
            state = "failed"
        else:
            state = "running" if task_id == TASKS[0] else None
        return {"task_id": task_id, "state": state, "try_number": 1, "duration": 1.5}


@pytest.fixture
def manifests(settings: Settings) -> None:
    write_manifest(settings, RUN_DATE, "train", {"model_version": "als-x", "params": {}})
    write_manifest(settings, RUN_DATE, "evaluate", {"k": 20, "als": {"ndcg": 0.2}})
    write_manifest(settings, RUN_DATE, "publish", {"published": True, "reason": "better"})


def _console() -> Console:
    return Console(record=True, width=200)


def test_a_new_run_is_triggered_unpaused_and_followed_to_success(
    settings: Settings, manifests: None, tmp_path: Path
) -> None:
    api = ScriptedAirflow(existing=[], run_states=["running", "success"])
    console = _console()
    run_batch_dag(api, console, settings, RUN_DATE, tmp_path / "airflow", poll_seconds=0)
    writes = [(m, p, b) for m, p, b in api.calls if m != "GET"]
    assert writes == [
        (
            "POST",
            "dags/flixlake_batch/dagRuns",
            # a run processes the day before its logical date
            {"dag_run_id": "demo__2026-11-22", "logical_date": "2026-11-23T00:00:00Z"},
        ),
        ("PATCH", "dags/flixlake_batch", {"is_paused": False}),
    ]
    printed = console.export_text()
    assert "compact_silver      running" in printed
    assert "publish_batch_view  success in 1.5s" in printed


def test_a_run_that_already_succeeded_is_not_run_again(
    settings: Settings, manifests: None, tmp_path: Path
) -> None:
    done = {"dag_run_id": "demo__2026-11-22", "state": "success"}
    api = ScriptedAirflow(existing=[done], run_states=["success"])
    console = _console()
    run_batch_dag(api, console, settings, RUN_DATE, tmp_path / "airflow", poll_seconds=0)
    assert [m for m, _, _ in api.calls if m == "POST"] == []
    assert "already succeeded for 2026-11-22" in console.export_text()


def test_a_failed_task_names_its_log_and_shows_its_last_output(
    settings: Settings, tmp_path: Path
) -> None:
    airflow_home = tmp_path / "airflow"
    log = (
        airflow_home
        / "logs/dag_id=flixlake_batch/run_id=demo__2026-11-22/task_id=compact_silver/attempt=1.log"
    )
    log.parent.mkdir(parents=True)
    output = "airflow.task.hooks.airflow.providers.standard.hooks.subprocess.SubprocessHook"
    log.write_text(
        "\n".join(
            json.dumps(event)
            for event in [
                {"logger": output, "event": "error: table 'bronze_events' does not exist yet"},
                {"logger": output, "event": "Command exited with return code 2"},
                {"logger": "task", "event": "Task failed with exception"},
            ]
        )
    )
    api = ScriptedAirflow(existing=[], run_states=["failed", "failed"], failing="compact_silver")
    console = _console()
    with pytest.raises(AirflowError, match="run demo__2026-11-22 failed"):
        run_batch_dag(api, console, settings, RUN_DATE, airflow_home, poll_seconds=0)
    printed = console.export_text()
    assert "compact_silver      failed" in printed
    assert f"log {log}" in printed
    assert "│ error: table 'bronze_events' does not exist yet" in printed
    assert "Task failed with exception" not in printed  # Airflow's own lines are not the output


@pytest.fixture
def metrics_url() -> Iterator[str]:
    """A /metrics endpoint with the service's real metric names: 3 answers, 2 of them fast."""
    metrics = ServingMetrics()
    for seconds in (0.0002, 0.0004, 0.03):
        metrics.recommend_ok.inc()
        metrics.recommend_latency.observe(seconds)
    metrics.requests.labels("recommend", "400").inc()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = metrics.render()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    server.server_close()


def _report(events: int, rejected: int, lag: float) -> BatchReport:
    return BatchReport(
        batch_id=0,
        events=events,
        rejected=rejected,
        written=True,
        seconds=0.5,
        lag_seconds=lag,
        committed_at=0.0,
        kafka_timestamps_ms=pa.array([], pa.int64()),
    )


def test_the_status_line_adds_up_batches_and_reads_the_service_metrics(
    tmp_path: Path, metrics_url: str
) -> None:
    stream_log, simulator_log = tmp_path / "speed-layer.log", tmp_path / "simulator.log"
    query = "speed_layer_20261123T000000"
    stream_log.write_text(
        "26/11/23 03:41:20 INFO SparkContext: Running Spark version 4.2.0\n"
        f"{_report(300, 2, 1.6).line(query)}\n"
        f"{_report(40, 0, 0.9).line(query + '_served')}\n"
    )
    simulator_log.write_text("sent 120 lines, 40/s\nsent 1,234 lines, 41/s\n")
    status = LiveStatus(stream_log, simulator_log, metrics_url, query)
    assert status.line() == (
        "sent 1,234 (41/s) │ bronze +300 (2 quarantined), lag 1.6s │ "
        "answers 3, p50 ≤ 0.5 ms │ served +40"
    )
    with stream_log.open("a") as log:  # only new lines count, a half-written one waits
        log.write(f"{_report(100, 0, 1.2).line(query)}\n[speed_layer_2026")
    assert "bronze +400 (2 quarantined), lag 1.2s" in status.line()


def test_the_status_line_shows_the_last_minutes_availability_from_the_exporter(
    tmp_path: Path, metrics_url: str
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from flixlake.monitoring.availability import AvailabilityMeter

    registry = CollectorRegistry()  # as the exporter serves it
    meter = AvailabilityMeter(registry)
    t = dt.datetime(2026, 11, 22, 8, 0, 10)
    for second, status, ms in (
        (0, 200, 90),
        (5, 200, 950),
        (9, 0, 800),
        (20, 200, 40),
        (70, 200, 5),
    ):
        meter.observe(t + dt.timedelta(seconds=second), status, ms)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        exporter = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        status = LiveStatus(tmp_path / "a.log", tmp_path / "b.log", metrics_url, "q", exporter)
        line = status.line()
    finally:
        server.shutdown()
    assert line.endswith("│ availability 50.0% of 4")  # 08:00: 2 of 4 ok (one slow, one failed)


def test_airflow_is_told_its_own_port_for_the_execution_api(tmp_path: Path) -> None:
    env = _airflow_env({"PATH": "/venv/bin"}, tmp_path / "airflow", 18080)
    assert env["AIRFLOW__API__PORT"] == "18080"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"  # not on every interface
    assert env["AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE"] == "False"  # only the demo's run
    assert env["AIRFLOW_HOME"] == str(tmp_path / "airflow")


def test_the_airflow_password_is_never_printed_only_where_it_is(
    settings: Settings, tmp_path: Path
) -> None:
    from flixlake.ops.demo import LiveDemo, LiveOptions

    class NoProcesses:  # stands in for the supervisor: starts nothing, everything is ready
        def __init__(self) -> None:
            self.started: list[tuple[str, list[str], dict[str, str]]] = []

        def start(self, name: str, command: list[str], env: dict[str, str], **_: Any) -> Any:
            self.started.append((name, command, env))
            return object()

        def wait_ready(self, *_: Any, **__: Any) -> float:
            return 0.0

    options = LiveOptions(3000, 600, 30, 7, 200.0, 18080, 18082)
    console = _console()
    processes = NoProcesses()
    demo = LiveDemo(settings, console, options, processes)  # type: ignore[arg-type]
    demo.password_file.parent.mkdir(parents=True)
    demo.password_file.write_text(json.dumps({"admin": "s3cret-Pa55"}))
    demo.start_airflow()
    shown = console.export_text()
    assert "s3cret-Pa55" not in shown
    assert str(demo.password_file) in shown.replace("\n", "")
    assert "http://127.0.0.1:18080" in shown
    ((_, _, env),) = processes.started
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
