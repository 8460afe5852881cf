"""The feedback-loop experiment: the live system retrained cycle after cycle on what it caused.

One *arm* runs the real parts the way a user starts them, on loopback ports of its own and a
home of its own: the broker (``flixlake broker``), the speed layer (``spark-submit
streaming/speed_layer.py``), the service (``flixlake serve``) and, once per cycle, the simulator
(``flixlake simulate --serve-url ... --minute-seconds ... --events N``), whose users ask the
service and watch what they were shown when they like it. Between cycles the batch pipeline
(:func:`flixlake.batch.pipeline.run_batch`) retrains in this process on everything landed so far
and publishes; the service swaps the new model in before the next cycle starts. At the end,
:func:`flixlake.audit.feedback.feedback_audit` measures each cycle.

Every arm starts from the same point (:func:`prepare_start`): a synthetic history ending
yesterday, ingested, and the first model trained on it — copied, so arms differ only in their
mitigation (none; 20 % of users in an exploration variant; every retrain's batch view re-ranked
against popularity, :mod:`flixlake.batch.debias`) and meet the same simulated users with the same
seeds (cycle ``c`` of every arm uses ``--stream-seed seed * 1000 + c``).

What the experiment's configuration changes, and why (:func:`experiment_overrides`):

* every retrain is published (``batch.publish.min_lift_over_popularity: 0``,
  ``min_lift_over_baseline: 0``, ``max_regression: 1``, ``audit.requirements.enforce_in_publish:
  false``): the experiment studies what retraining on your own effects does, so a gate must not
  stop a cycle (a tightening loop is exactly what would fail the long-tail requirement); the
  gate's figures and checks are still recorded in ``models``;
* ``batch.quality.min_volume_ratio: 0``: cycles are minutes apart, so a run date's partial day
  is no volume drop;
* ``batch.refit_on_full_history: true``: the published model learns from the latest cycle.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import yaml

from flixlake.audit.feedback import FeedbackAudit, feedback_audit
from flixlake.batch.ingest import ingest_paths
from flixlake.batch.pipeline import run_batch
from flixlake.config import (
    CONF_DIR_VAR,
    ENV_VAR,
    EXPLORE_MODEL,
    HOME_VAR,
    PROJECT_ROOT,
    Settings,
    conf_dir,
    deep_merge,
    load_settings,
)
from flixlake.contract.kafka import create_topic, free_port
from flixlake.lake.store import Lake, lake_from_settings
from flixlake.lake.tables import BRONZE_EVENTS, SERVED_RECOMMENDATIONS
from flixlake.ops.http import get_json
from flixlake.ops.speed_layer import start_speed_layer_process
from flixlake.ops.supervise import Child, ChildFailedError, Supervisor
from flixlake.sim.generate import generate_history

START_DIR = "start"  # the shared starting point: history + first model
CONTROL = "control"
STREAM_RESTARTS = 3  # speed-layer restarts an arm allows (it resumes from its checkpoint)
EXPLORE_VARIANT = "explore"


class LoopError(RuntimeError):
    """The experiment cannot go on (a part failed, data did not land); says why."""


@dataclass(frozen=True)
class LoopOptions:
    """The world, the cycles and the simulator's pace (shared by every arm)."""

    users: int = 1500
    movies: int = 300
    days: int = 7  # days of history before the first model, ending yesterday
    seed: int = 7
    cycles: int = 4  # simulated periods; a retrain between consecutive ones
    events: int = 40_000  # log lines the simulator sends per cycle
    rate: float = 600.0  # lines per second
    minute_seconds: float = 1.0  # wall-clock seconds a watched minute lasts
    experiment: str = "feedback"
    base_env: str = "local"  # conf/<base_env>.yaml under the experiment's overrides
    extra: Mapping[str, Any] = field(default_factory=dict)  # more config overrides


@dataclass(frozen=True)
class CycleRun:
    """What one cycle did: the model that served it and the simulator's summary."""

    index: int
    model_version: str
    simulated: dict[str, Any]
    landed_lines: int
    landed_answers: int
    simulate_seconds: float
    retrain_seconds: float | None  # the retrain after this cycle (None after the last)


@dataclass
class ArmResult:
    name: str
    explore_percent: float
    popularity_weight: float
    home: Path
    lake_root: Path
    cycles: list[CycleRun]
    audit: FeedbackAudit
    seconds: float


def experiment_overrides(
    options: LoopOptions,
    explore_percent: float,
    ports: Mapping[str, int] | None = None,
    popularity_weight: float = 0.0,
) -> dict[str, Any]:
    """The configuration of one arm (see the module docstring for why each key)."""
    variants: list[dict[str, Any]] = [
        {"name": CONTROL, "model": "current", "percent": 100.0 - explore_percent}
    ]
    if explore_percent > 0:
        variants.append(
            {"name": EXPLORE_VARIANT, "model": EXPLORE_MODEL, "percent": explore_percent}
        )
    overrides: dict[str, Any] = {
        "batch": {
            "refit_on_full_history": True,
            "publish": {
                "min_lift_over_popularity": 0.0,
                "min_lift_over_baseline": 0.0,
                "max_regression": 1.0,
            },
            "quality": {"min_volume_ratio": 0.0},
            "debias": {"popularity_weight": popularity_weight},
        },
        "audit": {"requirements": {"enforce_in_publish": False}},
        "serving": {"experiment": {"name": options.experiment, "variants": variants}},
        "monitoring": {"pushgateway_url": None},
        # compressed time: a simulated minute lasts minute_seconds of wall clock, so the speed
        # layer's per-minute rate rule would flag every viewer (account_rate, attacks.stream)
        "attacks": {"stream": {"enabled": False}},
    }
    if ports is not None:
        overrides["kafka"] = {"bootstrap_servers": f"127.0.0.1:{ports['broker']}"}
        overrides["serving"]["port"] = ports["service"]
        overrides["serving"]["host"] = "127.0.0.1"
    return deep_merge(overrides, dict(options.extra))


def write_conf_dir(directory: Path, base_env: str, overrides: Mapping[str, Any]) -> None:
    """A conf folder the children read (``FLIXLAKE_CONF_DIR``): ``base.yaml`` as it is and
    ``<base_env>.yaml`` with the overrides merged in, so they load what this process loads."""
    directory.mkdir(parents=True, exist_ok=True)
    source = conf_dir()
    shutil.copyfile(source / "base.yaml", directory / "base.yaml")
    env_file = source / f"{base_env}.yaml"
    env_data = yaml.safe_load(env_file.read_text()) or {} if env_file.exists() else {}
    (directory / f"{base_env}.yaml").write_text(
        yaml.safe_dump(deep_merge(env_data, overrides), sort_keys=False)
    )


def arm_settings(
    home: Path, options: LoopOptions, overrides: Mapping[str, Any], cycle: int | None = None
) -> Settings:
    """This arm's settings; ``cycle`` gives a retrain its own artifacts folder (manifests and
    factors of every cycle's model are kept: the cycles share one run date)."""
    more = dict(overrides)
    if cycle is not None:
        more = deep_merge(more, {"artifacts": {"root": f"artifacts/cycle-{cycle}"}})
    return load_settings(options.base_env, home=home, overrides=more)


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _retrain(
    spark: Any, lake: Lake, settings: Settings, run_date: dt.date, say: Callable[[str], None]
) -> tuple[str, float]:
    """Run the batch pipeline; the published model version and the seconds it took."""
    started = time.monotonic()
    results = run_batch(
        spark,
        lake,
        settings,
        run_date,
        on_done=lambda r: say(f"      {r.step.name} {r.seconds:.0f}s"),
    )
    publish = next(r.summary for r in results if r.step.name == "publish")
    if not publish.get("published"):
        raise LoopError(f"the retrain of {run_date} published nothing: {publish}")
    return str(publish["model_version"]), time.monotonic() - started


def prepare_start(
    root: Path, options: LoopOptions, spark: Any, say: Callable[[str], None] = print
) -> Path:
    """Once for all arms: the history (ending yesterday) in bronze and the first model published.

    Reused when ``root/start`` already holds it for the same options.
    """
    start = root / START_DIR
    stamp = start / "start.json"
    wanted = {
        "users": options.users,
        "movies": options.movies,
        "days": options.days,
        "seed": options.seed,
        "end": (_today() - dt.timedelta(days=1)).isoformat(),
        "base_env": options.base_env,
        "extra": json.loads(json.dumps(dict(options.extra), default=str)),
    }
    if stamp.exists() and json.loads(stamp.read_text()).get("options") == wanted:
        say(f"starting point already in {start}")
        return start
    shutil.rmtree(start, ignore_errors=True)
    overrides = experiment_overrides(options, 0.0)
    settings = arm_settings(start, options, overrides, cycle=0)
    end = dt.date.fromisoformat(wanted["end"])
    say(
        f"history: {options.users:,} users x {options.movies:,} movies x {options.days} days to {end}"
    )
    generated = generate_history(
        start / "data",
        n_users=options.users,
        n_movies=options.movies,
        days=options.days,
        seed=options.seed,
        end=end,
    )
    lake = lake_from_settings(settings)
    ingest_paths(lake, [start / "data"], settings.ingest.chunk_lines)
    say(f"ingested {generated['lines']['total']:,} lines; first model (run date {end})")
    version, seconds = _retrain(spark, lake, settings, end, say)
    say(f"first model {version} in {seconds:.0f}s")
    stamp.write_text(
        json.dumps({"options": wanted, "model_version": version, "lines": generated["lines"]})
    )
    return start


def _child_env(home: Path, env: str, conf: Path) -> dict[str, str]:
    bin_dir = Path(sys.executable).parent
    python = str(bin_dir / "python")
    return {
        **os.environ,
        HOME_VAR: str(home),
        ENV_VAR: env,
        CONF_DIR_VAR: str(conf),
        "PYSPARK_PYTHON": python,
        "PYSPARK_DRIVER_PYTHON": python,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _count(lake: Lake, name: str, column: str, value: str) -> int:
    if not lake.exists(name):
        return 0
    table = lake.read(name, columns=[column], filters=[(column, "=", value)])
    return table.num_rows


def _serving(url: str, version: str) -> bool:
    """The service answers every model variant with ``version``."""
    health = get_json(f"{url}/health")
    if not health:
        return False
    models = [
        v["model_version"] for v in health["variants"].values() if v["model"] != EXPLORE_MODEL
    ]
    return bool(models) and all(m == version for m in models)


def _simulator_summary(child: Child) -> dict[str, Any]:
    """The JSON summary ``flixlake simulate`` prints last."""
    text = child.log_path.read_text(errors="replace")
    start = text.rfind("\n{\n")
    try:
        return dict(json.loads(text[start + 1 if start >= 0 else 0 :]))
    except ValueError:
        raise LoopError(f"no summary from the simulator; log {child.log_path}") from None


class Arm:
    """One arm of the experiment: its children, its lake, its cycles."""

    def __init__(
        self,
        root: Path,
        name: str,
        options: LoopOptions,
        explore_percent: float,
        spark: Any,
        say: Callable[[str], None] = print,
        popularity_weight: float = 0.0,
    ) -> None:
        self.name = name
        self.options = options
        self.explore_percent = explore_percent
        self.popularity_weight = popularity_weight
        self.spark = spark
        self.say = say
        self.home = root / name
        self.ports = {"broker": free_port(), "service": free_port()}
        self.overrides = experiment_overrides(
            options, explore_percent, self.ports, popularity_weight
        )
        self.conf = self.home / "conf"
        self.settings = arm_settings(self.home, options, self.overrides)
        self.lake = lake_from_settings(self.settings)
        self.bootstrap = self.settings.kafka.bootstrap_servers
        self.url = f"http://127.0.0.1:{self.ports['service']}"
        self.env = _child_env(self.home, options.base_env, self.conf)
        self.bin = Path(sys.executable).parent
        self.supervisor = Supervisor(self.home / "logs")
        self.service: Child | None = None
        self.stream_restarts = 0

    def run(self, start: Path) -> ArmResult:
        began = time.monotonic()
        shutil.rmtree(self.home, ignore_errors=True)
        shutil.copytree(start, self.home, ignore=shutil.ignore_patterns("data", "spark-tmp"))
        write_conf_dir(self.conf, self.options.base_env, self.overrides)
        first = json.loads((start / "start.json").read_text())["model_version"]
        try:
            self.start_parts(first)
            cycles = self.cycles(first)
        finally:
            self.supervisor.stop_all()
        self.say(f"[{self.name}] audit of {len(cycles)} cycles")
        audit = feedback_audit(self.spark, self.lake, self.options.experiment)
        return ArmResult(
            self.name,
            self.explore_percent,
            self.popularity_weight,
            self.home,
            self.settings.lake_root,
            cycles,
            audit,
            time.monotonic() - began,
        )

    def start_parts(self, model_version: str) -> None:
        settings, say = self.settings, self.say
        broker = self.supervisor.start(
            "broker",
            [str(self.bin / "flixlake"), "broker", f"--port={self.ports['broker']}"],
            env=self.env,
            cwd=PROJECT_ROOT,
        )
        self.supervisor.wait_ready(broker, lambda: "broker ready at" in broker.log_tail(), 120)
        telemetry = settings.serving.telemetry
        for topic in dict.fromkeys(
            [settings.kafka.topic, telemetry.served_topic, telemetry.log_topic]
        ):
            create_topic(self.bootstrap, topic, settings.kafka.partitions)
        self.start_stream()
        service = self.supervisor.start(
            "service",
            [
                str(self.bin / "flixlake"),
                "serve",
                f"--port={self.ports['service']}",
                "--host=127.0.0.1",
            ],
            env=self.env,
            cwd=PROJECT_ROOT,
            signal_to="child",
        )
        self.supervisor.wait_ready(
            service, lambda: _serving(self.url, model_version), 300, what=f"serving {model_version}"
        )
        self.service = service
        say(f"[{self.name}] broker, speed layer and service up; serving {model_version}")

    def start_stream(self) -> None:
        """The speed layer, until its query has a checkpoint (a restart resumes from it)."""
        settings = self.settings
        query = f"{settings.streaming.query_name}_{self.name}"
        name = "speed-layer" + (f"-{self.stream_restarts}" if self.stream_restarts else "")
        start_speed_layer_process(
            self.supervisor,
            settings,
            self.env,
            name=name,  # a log of its own per start: a restart keeps the failed run's
            bootstrap_servers=self.bootstrap,
            query_name=query,
            timeout=600,
        )

    def cycles(self, first_model: str) -> list[CycleRun]:
        options, say = self.options, self.say
        runs: list[CycleRun] = []
        model = first_model
        sent_total = answers_total = 0
        for c in range(options.cycles):
            began = time.monotonic()
            simulated = self.simulate(c)
            sent_total += int(simulated["sent"])
            answers_total += int(simulated["reco_requests"]["ok"])
            lines, answers = self.wait_landed(sent_total, answers_total)
            simulate_seconds = time.monotonic() - began
            reco = simulated["reco_requests"]
            say(
                f"[{self.name}] cycle {c} ({model}): {simulated['sent']:,} lines, "
                f"{reco['ok']:,} answers, {reco['taken']:,} recommended movies watched; "
                f"landed in {simulate_seconds:.0f}s"
            )
            retrain_seconds = None
            next_model = model
            if c + 1 < options.cycles:
                settings = arm_settings(self.home, options, self.overrides, cycle=c + 1)
                next_model, retrain_seconds = _retrain(
                    self.spark, self.lake, settings, _today(), say
                )
                self.wait_serving(next_model)
                say(f"[{self.name}] retrained in {retrain_seconds:.0f}s: serving {next_model}")
            runs.append(
                CycleRun(c, model, simulated, lines, answers, simulate_seconds, retrain_seconds)
            )
            model = next_model
        return runs

    def wait_serving(self, version: str) -> None:
        """Until the service answers the model variants with ``version`` (it polls the registry)."""
        assert self.service is not None
        url = self.url
        self.supervisor.wait_ready(
            self.service, lambda: _serving(url, version), 300, what=f"serving {version}"
        )

    def simulate(self, cycle: int) -> dict[str, Any]:
        options = self.options
        child = self.supervisor.start(
            f"simulate-{cycle}",
            [
                str(self.bin / "flixlake"),
                "simulate",
                f"--rate={options.rate:g}",
                f"--users={options.users}",
                f"--movies={options.movies}",
                f"--seed={options.seed}",
                f"--stream-seed={options.seed * 1000 + cycle}",
                f"--events={options.events}",
                f"--minute-seconds={options.minute_seconds:g}",
                f"--serve-url={self.url}",
                f"--bootstrap-servers={self.bootstrap}",
            ],
            env=self.env,
            cwd=PROJECT_ROOT,
        )
        deadline = time.monotonic() + 120 + 10 * options.events / options.rate
        while child.exit_code() is None:
            if time.monotonic() > deadline:
                raise LoopError(f"the simulator did not finish in time; log {child.log_path}")
            time.sleep(0.5)
        self.supervisor.children.remove(child)
        if child.exit_code() != 0:
            raise ChildFailedError(
                f"simulate exited with {child.exit_code()}; log {child.log_path}:\n{child.log_tail()}"
            )
        return _simulator_summary(child)

    def wait_landed(self, lines: int, answers: int, timeout: float = 300.0) -> tuple[int, int]:
        """Wait until the speed layer has landed every line sent and every answer given."""
        topic = self.settings.kafka.topic
        deadline = time.monotonic() + timeout
        while True:
            landed = _count(self.lake, BRONZE_EVENTS.name, "source", topic)
            served = self._answers()
            if landed >= lines and served >= answers:
                return landed, served
            died = self.supervisor.exited()
            stream_died = len(died) == 1 and died[0].name.startswith("speed-layer")
            if stream_died and self.stream_restarts < STREAM_RESTARTS:
                # Spark waits a fixed 10 s for a Python worker to connect back, which a busy
                # machine can miss; the query resumes from its checkpoint, exactly once
                self.stream_restarts += 1
                self.say(
                    f"[{self.name}] the speed layer exited ({died[0].log_path}); "
                    f"restart {self.stream_restarts} of {STREAM_RESTARTS}"
                )
                self.supervisor.children.remove(died[0])
                self.start_stream()
                deadline = time.monotonic() + timeout
                continue
            if died:
                raise ChildFailedError(
                    f"{died[0].name} exited; log {died[0].log_path}:\n{died[0].log_tail()}"
                )
            if time.monotonic() > deadline:
                raise LoopError(
                    f"after {timeout:.0f}s the speed layer landed {landed:,} of {lines:,} lines "
                    f"and {served:,} of {answers:,} answers"
                )
            time.sleep(2.0)

    def _answers(self) -> int:
        if not self.lake.exists(SERVED_RECOMMENDATIONS.name):
            return 0
        table = self.lake.read(SERVED_RECOMMENDATIONS.name, columns=["request_id", "status"])
        return len(pc.unique(table.filter(pc.equal(table["status"], 200))["request_id"]))


def run_arm(
    root: Path,
    name: str,
    options: LoopOptions,
    explore_percent: float,
    spark: Any,
    say: Callable[[str], None] = print,
    popularity_weight: float = 0.0,
) -> ArmResult:
    """One arm from the shared starting point (prepared first if needed): ``explore_percent`` of
    users in the exploration variant, and every retrain's batch view re-ranked against
    popularity with ``popularity_weight`` (0: off; the shared first model is never re-ranked)."""
    start = prepare_start(root, options, spark, say)
    return Arm(root, name, options, explore_percent, spark, say, popularity_weight).run(start)
