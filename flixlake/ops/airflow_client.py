"""The few calls of Airflow's REST API (v2) the demo makes: health, DAG parsed, trigger, follow."""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from flixlake.batch.pipeline import BATCH_STEPS
from flixlake.config import Settings
from flixlake.lake.runs import read_manifest
from flixlake.ops.http import get_json, http_request
from flixlake.ops.terminal import clock, print_batch_summary

BATCH_DAG = "flixlake_batch"
AIRFLOW_USER = "admin"  # the simple auth manager's default user (core.simple_auth_manager_users)
GET_ATTEMPTS = 5  # Airflow's API server (one worker) can take > 10 s to answer on a busy machine


class AirflowError(RuntimeError):
    """Airflow refused a call, or the batch run it follows failed; says what and where."""


def airflow_healthy(base_url: str) -> bool:
    health = get_json(f"{base_url}/api/v2/monitor/health")
    return bool(health) and all(
        part.get("status") == "healthy" for part in health.values() if isinstance(part, dict)
    )


class AirflowApi:
    """The few Airflow REST API (v2) calls the demo makes, as the simple auth manager's user."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url
        self.username = username
        self.password = password
        self._token: str | None = None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """``/api/v2/<path>`` as JSON; raises AirflowError on an error status."""
        if self._token is None:
            credentials = {"username": self.username, "password": self.password}
            status, answer, _ = http_request("POST", f"{self.base_url}/auth/token", credentials)
            if status not in (200, 201):
                raise AirflowError(
                    f"Airflow refused a token for {self.username!r}: {answer[:300]!r}"
                )
            self._token = json.loads(answer)["access_token"]
        for attempt in range(GET_ATTEMPTS if method == "GET" else 1):
            try:
                status, answer, _ = http_request(
                    method, f"{self.base_url}/api/v2/{path}", body, self._token
                )
                break
            except OSError as exc:  # a busy machine: a GET is safe to repeat after a timeout
                timed_out = isinstance(exc, TimeoutError) or isinstance(
                    getattr(exc, "reason", None), TimeoutError
                )
                if not timed_out or attempt == GET_ATTEMPTS - 1 or method != "GET":
                    raise
                time.sleep(2.0 * (attempt + 1))
        if status >= 400:
            raise AirflowError(f"Airflow API {method} {path}: HTTP {status} {answer[:300]!r}")
        return json.loads(answer) if answer else None

    def dag_parsed(self, dag_id: str) -> bool:
        """True once the DAG is known; a AirflowError naming the import error if its file broke."""
        try:
            self.call("GET", f"dags/{dag_id}")
            return True
        except AirflowError:
            errors = self.call("GET", "importErrors")["import_errors"]
            if errors:
                raise AirflowError(
                    f"Airflow cannot import the DAGs: {errors[0]['filename']}: "
                    f"{errors[0]['stack_trace'][-1500:]}"
                ) from None
            return False
        except (OSError, ValueError):  # the API server is still starting
            return False


def run_batch_dag(
    api: AirflowApi,
    console: Console,
    settings: Settings,
    run_date: dt.date,
    airflow_home: Path,
    poll_seconds: float = 2.0,
) -> None:
    """Trigger ``flixlake_batch`` for ``run_date`` (resume a failed run, skip a succeeded one),
    unpause it, print each task's state changes until the run ends; AirflowError if it failed.

    A run processes the last day complete at its logical date (see ``dags/flixlake_batch.py``),
    so the run for ``run_date`` has logical date ``run_date + 1 day`` at 00:00 UTC.
    """
    logical = f"{(run_date + dt.timedelta(days=1)).isoformat()}T00:00:00Z"
    quoted = urllib.parse.quote(logical)
    runs = api.call(
        "GET", f"dags/{BATCH_DAG}/dagRuns?logical_date_gte={quoted}&logical_date_lte={quoted}"
    )["dag_runs"]
    run_id = runs[0]["dag_run_id"] if runs else f"demo__{run_date.isoformat()}"
    run_path = f"dags/{BATCH_DAG}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
    if not runs:
        api.call(
            "POST", f"dags/{BATCH_DAG}/dagRuns", {"dag_run_id": run_id, "logical_date": logical}
        )
        console.print(f"    triggered {BATCH_DAG} for {run_date}: run {run_id}")
    elif runs[0]["state"] == "success":
        console.print(f"    {BATCH_DAG} already succeeded for {run_date} (run {run_id})")
    else:
        console.print(f"    resuming {BATCH_DAG} run {run_id} ({runs[0]['state']})")
        if runs[0]["state"] == "failed":
            api.call("POST", f"{run_path}/clear", {"dry_run": False, "only_failed": True})
    api.call("PATCH", f"dags/{BATCH_DAG}", {"is_paused": False})

    steps = {s.task_id: (i, s.description) for i, s in enumerate(BATCH_STEPS)}
    seen: dict[str, tuple[str, int]] = {}
    polling_since = time.monotonic()
    while True:
        tasks = api.call("GET", f"{run_path}/taskInstances")["task_instances"]
        for task in sorted(tasks, key=lambda t: steps[t["task_id"]][0]):
            task_id, state, attempt = task["task_id"], task["state"], task["try_number"]
            if state is None or seen.get(task_id) == (state, attempt):
                continue
            seen[task_id] = (state, attempt)
            took = f" in {task['duration']:.1f}s" if task.get("duration") else ""
            console.print(
                f"    {clock(time.monotonic() - polling_since)}  {task_id:<19} {state}{took}"
                f"   [dim]{steps[task_id][1]}[/dim]"
            )
            if state in ("failed", "up_for_retry"):
                log = _task_log(airflow_home, run_id, task_id, attempt)
                console.print(f"      [red]attempt {attempt} failed[/red]; log {log}")
                for line in _task_output_tail(log):
                    console.print(f"      │ {escape(line)}")
            if state == "up_for_retry":
                console.print(
                    f"      Airflow retries it in {settings.airflow.retry_delay_minutes} min "
                    "(airflow.retry_delay_minutes); Ctrl-C stops the demo"
                )
        state = api.call("GET", run_path)["state"]
        if state == "success":
            break
        if state == "failed":
            raise AirflowError(
                f"{BATCH_DAG} run {run_id} failed; task logs under {airflow_home}/logs"
            )
        time.sleep(poll_seconds)
    print_batch_summary(
        {s: read_manifest(settings, run_date, s) for s in ("train", "evaluate", "publish")}
    )


def _task_log(airflow_home: Path, run_id: str, task_id: str, attempt: int) -> Path:
    return (
        airflow_home
        / "logs"
        / f"dag_id={BATCH_DAG}"
        / f"run_id={run_id}"
        / f"task_id={task_id}"
        / f"attempt={attempt}.log"
    )


def _task_output_tail(log: Path, lines: int = 4) -> list[str]:
    """The last lines the task's command printed (Airflow logs them as JSON events)."""
    output = []
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    for raw in text.splitlines():
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if "subprocess" in str(event.get("logger", "")):
            output.append(str(event.get("event", "")))
    return output[-lines:]
