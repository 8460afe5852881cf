"""The speed layer with the real parts: Apache Kafka, Spark Structured Streaming, Delta tables.

Expected values come from how the lines were produced: line ``i`` goes to partition ``i % 3``
at offset ``i // 3`` of a fresh topic, and the structured events behind the valid lines give the
speed views.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from flixlake.config import Settings, load_settings
from flixlake.contract.kafka import BrokerError, create_topic, free_port, produce_lines
from flixlake.lake.store import Lake
from flixlake.ops.broker import BrokerProcess, running_broker, start_broker, stop_broker
from flixlake.streaming.harness import SpeedLayerError, SpeedLayerRun
from flixlake.streaming.job import start_speed_layer
from flixlake.testing import record_published_model

from .conftest import TcpProxy

pytestmark = pytest.mark.integration

PARTITIONS = 3
REPO = Path(__file__).resolve().parents[2]
UTC = dt.UTC
DAY = dt.datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - dt.timedelta(days=2)
MODEL_USERS = set(range(1, 11))


@dataclass(frozen=True)
class Event:
    user: int
    kind: str  # watch | rate | reco
    movie: str | None
    time: dt.datetime


@dataclass
class Produced:
    lines: list[str | bytes]
    valid: dict[int, Event]  # line index -> the event it encodes
    bad: dict[int, str]  # line index -> reject reason
    copies: dict[int, int]  # line index -> index of the identical earlier line

    def position(self, index: int) -> tuple[int, int]:
        """Where a single round-robin ``produce_lines`` call puts line ``index``."""
        return index % PARTITIONS, index // PARTITIONS

    def raw(self, index: int) -> str:
        return raw_of(self.lines[index])


def stamp(time: dt.datetime) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def make_lines(n_valid: int, seed: int, bad_each: int = 2, copies: int = 5) -> Produced:
    """Valid watch/rate/reco lines (unique), every bad kind, and exact copies, shuffled."""
    rng = random.Random(seed)
    start = DAY - dt.timedelta(hours=12)
    items: list[tuple[str | bytes, Event | None, str | None]] = []
    for i in range(n_valid):
        time = start + dt.timedelta(seconds=60 * i + rng.randrange(60))  # unique and increasing
        user, movie = rng.randint(1, 40), f"movie+{rng.randint(0, 19)}+{1990 + i % 7}"
        roll = rng.random()
        if roll < 0.8:
            line, event = (
                f"{stamp(time)},{user},GET /data/m/{movie}/{rng.randint(0, 119)}.mpg",
                Event(user, "watch", movie, time),
            )
        elif roll < 0.95:
            line = f"{stamp(time)},{user},GET /rate/{movie}={rng.randint(1, 5)}"
            event = Event(user, "rate", movie, time)
        else:
            line = (
                f"{stamp(time)},{user},recommendation request s1, status 200, "
                f"result: {movie}, other+1999, {rng.randint(5, 300)} ms"
            )
            event = Event(user, "reco", None, time)
        items.append((line, event, None))
    t = stamp(DAY)
    for k in range(bad_each):
        for line, reason in [
            (b"\xff\xfe" + str(k).encode() + b",1,GET /rate/a=3", "invalid_utf8"),
            ("", "empty"),
            ("x" * 9000 + str(k), "too_long"),
            (f"{t},4{k}", "field_count"),
            (f"2026-13-45T10:00:0{k},1,GET /data/m/a/1.mpg", "bad_time"),
            (f"{t},abc{k},GET /data/m/a/1.mpg", "bad_user"),
            (f"{t},1,POST /x/{k}", "unknown_verb"),
            (f"{t},1,GET /data/m/#bad{k}/1.mpg", "bad_movie"),
            (f"{t},1,GET /data/m/a{k}/-1.mpg", "bad_minute"),
            (f"{t},1,GET /rate/a{k}=7", "bad_rating"),
            (f"{t},1,recommendation request s1, status 2000, result: a{k}, 5 ms", "bad_reco"),
        ]:
            items.append((line, None, reason))
    rng.shuffle(items)
    lines = [line for line, _, _ in items]
    valid = {i: e for i, (_, e, _) in enumerate(items) if e is not None}
    bad = {i: r for i, (_, _, r) in enumerate(items) if r is not None}
    copy_of: dict[int, int] = {}
    for original in rng.sample(sorted(valid), copies):
        copy_of[len(lines)] = original
        lines.append(lines[original])
    return Produced(lines, valid, bad, copy_of)


def stream_settings(home: Path, bootstrap: str, topic: str, **streaming: Any) -> Settings:
    return load_settings(
        "test",
        home=home,
        overrides={
            "kafka": {"bootstrap_servers": bootstrap, "topic": topic},
            "streaming": {
                "trigger_seconds": 0.2,
                "max_events_per_trigger": 300,
                **streaming,
            },
        },
    )


def bronze_count(lake: Lake) -> int:
    return (
        lake.read("bronze_events", columns=["source_offset"]).num_rows
        if lake.exists("bronze_events")
        else 0
    )


def wait_for(
    check: Callable[[], bool], timeout: float, what: str, run: SpeedLayerRun | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if run is not None and not run.query.isActive:
            raise AssertionError(f"query died while waiting for {what}: {run.query.exception()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


def stop(run: SpeedLayerRun) -> None:
    if run.query.isActive:
        run.stop(graceful=True, timeout=60)
    assert run.failure() is None, run.failure()


def raw_of(line: str | bytes) -> str:
    return line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line


def expected_positions(*calls: list[str | bytes]) -> dict[tuple[int, int], str]:
    """Where round-robin ``produce_lines`` calls put each line of a fresh topic."""
    next_offset = [0] * PARTITIONS
    positions = {}
    for lines in calls:
        for i, line in enumerate(lines):
            p = i % PARTITIONS
            positions[(p, next_offset[p])] = raw_of(line)
            next_offset[p] += 1
    return positions


def assert_bronze_is(lake: Lake, expected: dict[tuple[int, int], str]) -> pa.Table:
    """Every produced line is in bronze exactly once, at its partition and offset."""
    bronze = lake.read("bronze_events")
    positions = list(
        zip(
            bronze["source_partition"].to_pylist(), bronze["source_offset"].to_pylist(), strict=True
        )
    )
    assert len(positions) == len(expected)
    assert len(set(positions)) == len(positions), "duplicate (partition, offset) in bronze"
    assert dict(zip(positions, bronze["raw"].to_pylist(), strict=True)) == expected
    return bronze


def publish_model(lake: Lake, version: str, run_date: dt.date, users: set[int]) -> None:
    record_published_model(lake, version, run_date)
    recos = [
        {"user_id": u, "rank": 1, "movie_id": "x", "score": 1.0, "model_version": version}
        for u in sorted(users)
    ]
    lake.append("batch_recommendations", pa.Table.from_pylist(recos))


# -- the whole speed layer -------------------------------------------------------------------------
def test_every_line_lands_once_and_views_match_the_produced_events(
    spark: Any, broker: BrokerProcess, topic: str, tmp_path: Path
) -> None:
    produced = make_lines(n_valid=600, seed=3)
    settings = stream_settings(tmp_path, broker.bootstrap, topic, max_events_per_trigger=250)
    lake = Lake(settings.lake_root)
    publish_model(lake, "m1", DAY.date(), MODEL_USERS)
    produce_lines(broker.bootstrap, topic, produced.lines, partitions=PARTITIONS)

    run = start_speed_layer(spark, settings, lake, quiet=True)
    try:
        n = len(produced.lines)
        wait_for(lambda: sum(r.events for r in run.reports) >= n, 600, f"{n} lines", run)
    finally:
        stop(run)
    assert len(run.reports) >= 3  # several micro-batches (250 events each at most)

    bronze = assert_bronze_is(lake, expected_positions(produced.lines))
    by_pos = {
        (r["source_partition"], r["source_offset"]): r
        for r in bronze.select(
            ["source_partition", "source_offset", "parse_status", "reject_reason", "ingest_batch"]
        ).to_pylist()
    }
    for index, reason in produced.bad.items():
        assert by_pos[produced.position(index)]["reject_reason"] == reason
    for index in produced.valid:
        assert by_pos[produced.position(index)]["parse_status"] in ("ok", "rejected")
    # identical valid lines of one partition in one micro-batch: the first by offset is kept
    # (copies on other partitions or in other batches stay in bronze; silver removes them)
    groups: dict[tuple[str, str, int], list[tuple[int, int]]] = defaultdict(list)
    for copy, original in produced.copies.items():
        for index in (original, copy):
            pos = produced.position(index)
            groups[(produced.raw(index), by_pos[pos]["ingest_batch"], pos[0])].append(pos)
    expected_dupes = {pos for positions in groups.values() for pos in sorted(set(positions))[1:]}
    dupes = {pos for pos, r in by_pos.items() if r["reject_reason"] == "duplicate"}
    assert dupes == expected_dupes
    rejected = {pos for pos, r in by_pos.items() if r["parse_status"] == "rejected"}
    assert rejected == {produced.position(i) for i in produced.bad} | expected_dupes

    quarantine = lake.read("quarantine_events")
    q_pos = list(
        zip(
            quarantine["source_partition"].to_pylist(),
            quarantine["source_offset"].to_pylist(),
            strict=True,
        )
    )
    assert sorted(q_pos) == sorted(rejected)
    # what the batches report (and the flixlake_stream_* metrics count) is what quarantine holds
    reported: Counter[str] = Counter()
    for r in run.reports:
        reported.update(r.rejected_by_reason)
    assert reported == Counter(quarantine["reason"].to_pylist())

    # speed views, from the structured events behind the valid lines
    since = DAY
    recent = [e for e in produced.valid.values() if e.time >= since]
    expected_activity: dict[int, dict[str, Any]] = {}
    for e in recent:
        a = expected_activity.setdefault(
            e.user, {"watched": set(), "rated": set(), "first": e.time, "last": e.time}
        )
        if e.kind == "watch":
            a["watched"].add(e.movie)
        if e.kind == "rate":
            a["rated"].add(e.movie)
        a["first"], a["last"] = min(a["first"], e.time), max(a["last"], e.time)
    activity = {
        r["user_id"]: {
            "watched": set(r["watched_movies"]),
            "rated": set(r["rated_movies"]),
            "first": r["first_seen"],
            "last": r["last_seen"],
        }
        for r in lake.read("speed_user_activity").to_pylist()
    }
    assert activity == expected_activity
    assert set(lake.read("speed_new_users")["user_id"].to_pylist()) == (
        set(expected_activity) - MODEL_USERS
    )

    as_of = max(e.time for e in produced.valid.values())
    expected_trending: dict[tuple[str, str], int] = {}
    for label, seconds in (("1h", 3600), ("24h", 86400)):
        watchers: dict[str, set[int]] = defaultdict(set)
        for e in produced.valid.values():
            if e.kind == "watch" and as_of - dt.timedelta(seconds=seconds) < e.time <= as_of:
                watchers[e.movie].add(e.user)  # type: ignore[index]
        expected_trending.update({(label, m): len(u) for m, u in watchers.items()})
    trending = lake.read("speed_trending").to_pylist()
    assert {(r["window"], r["movie_id"]): r["watchers"] for r in trending} == expected_trending
    assert {r["as_of"] for r in trending} == {as_of}


def test_hard_stop_mid_stream_and_restart_loses_and_doubles_nothing(
    spark: Any, broker: BrokerProcess, topic: str, tmp_path: Path
) -> None:
    produced = make_lines(n_valid=2400, seed=5, bad_each=1, copies=0)
    first, later = produced.lines[:2000], produced.lines[2000:]
    settings = stream_settings(tmp_path, broker.bootstrap, topic, max_events_per_trigger=200)
    lake = Lake(settings.lake_root)
    produce_lines(broker.bootstrap, topic, first, partitions=PARTITIONS)

    run = start_speed_layer(spark, settings, lake, quiet=True)
    try:
        # generous: at load 30 on 2 cores the first batch (JIT, first Delta commit) takes minutes
        wait_for(lambda: bronze_count(lake) >= 400, 600, "two micro-batches", run)
    finally:
        run.stop(graceful=False)  # abrupt: no waiting for the batch in flight
    assert run.wait_idle(timeout=60)
    assert 400 <= bronze_count(lake) < len(first)  # really stopped mid-stream

    produce_lines(broker.bootstrap, topic, later, partitions=PARTITIONS)
    restarted = start_speed_layer(spark, settings, lake, quiet=True)
    try:
        n = len(first) + len(later)
        wait_for(lambda: bronze_count(lake) >= n, 600, f"{n} lines after restart", restarted)
        time.sleep(1.0)  # a few more triggers: nothing else may arrive
    finally:
        stop(restarted)
    assert_bronze_is(lake, expected_positions(first, later))


def test_a_second_speed_layer_with_the_same_query_name_is_refused(
    spark: Any, broker: BrokerProcess, topic: str, tmp_path: Path
) -> None:
    """Two writers with one query name share a checkpoint and an app id: the second refuses to
    start; the first goes on, and bronze holds every line once."""
    produced = make_lines(n_valid=300, seed=11, bad_each=0, copies=0)
    settings = stream_settings(tmp_path, broker.bootstrap, topic, land_served=False)
    lake = Lake(settings.lake_root)
    produce_lines(broker.bootstrap, topic, produced.lines[:150], partitions=PARTITIONS)
    run = start_speed_layer(spark, settings, lake, quiet=True)
    try:
        wait_for(lambda: bronze_count(lake) >= 1, 600, "the first batch", run)
        with pytest.raises(SpeedLayerError, match="already running"):
            start_speed_layer(spark, settings, lake, quiet=True)
        produce_lines(broker.bootstrap, topic, produced.lines[150:], partitions=PARTITIONS)
        n = len(produced.lines)
        wait_for(lambda: bronze_count(lake) >= n, 600, f"{n} lines", run)
        time.sleep(1.0)  # a few more triggers: nothing else may arrive
    finally:
        stop(run)
    assert_bronze_is(lake, expected_positions(produced.lines[:150], produced.lines[150:]))
    restarted = start_speed_layer(spark, settings, lake, quiet=True)  # stopped: free again
    stop(restarted)


def start_job(home: Path, bootstrap: str, topic: str, log: Path) -> subprocess.Popen[bytes]:
    """The speed layer as its own process, the way a user starts it (its own Spark)."""
    command = [
        sys.executable,
        str(REPO / "streaming" / "speed_layer.py"),
        "--env=test",
        f"--home={home}",
        f"--bootstrap-servers={bootstrap}",
        f"--topic={topic}",
        "--max-events-per-trigger=200",  # few batches: on a busy machine each takes seconds
        "--trigger-seconds=0.2",
    ]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    with log.open("ab") as out:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def kill_job(job: subprocess.Popen[bytes]) -> None:
    os.killpg(job.pid, signal.SIGKILL)  # the job and the JVM and Python workers it started
    job.wait(timeout=30)


def test_broker_and_job_killed_mid_stream_lose_and_double_nothing(tmp_path: Path) -> None:
    """kill -9 of the broker (restarted on its log) and twice of the streaming job: bronze
    holds every produced line exactly once at its position, quarantine exactly the rejects."""
    produced = make_lines(n_valid=1200, seed=7, bad_each=2, copies=0)
    chunks = [produced.lines[:500], produced.lines[500:850], produced.lines[850:]]
    port, kafka_dir, home = free_port(), tmp_path / "kafka", tmp_path / "home"
    lake = Lake(load_settings("test", home=home).lake_root)
    log = tmp_path / "job.log"
    broker = start_broker(port, log_dir=kafka_dir)
    job: subprocess.Popen[bytes] | None = None
    try:
        create_topic(broker.bootstrap, "movielog", PARTITIONS)
        produce_lines(broker.bootstrap, "movielog", chunks[0], partitions=PARTITIONS)
        job = start_job(home, broker.bootstrap, "movielog", log)
        wait_for(lambda: bronze_count(lake) >= 200 or job.poll() is not None, 600, "batches")
        assert job.poll() is None, log.read_text()[-3000:]

        os.kill(broker.pid, signal.SIGKILL)  # the broker dies under the running query
        broker.process.wait(timeout=30)
        broker = start_broker(port, log_dir=kafka_dir)  # same log: every record is still there
        produce_lines(broker.bootstrap, "movielog", chunks[1], partitions=PARTITIONS)
        done = bronze_count(lake)
        wait_for(lambda: bronze_count(lake) > done or job.poll() is not None, 600, "more batches")
        assert job.poll() is None, log.read_text()[-3000:]

        kill_job(job)  # first kill -9 of the job, mid-stream
        assert bronze_count(lake) < len(chunks[0]) + len(chunks[1])
        job = start_job(home, broker.bootstrap, "movielog", log)
        done = bronze_count(lake)
        wait_for(lambda: bronze_count(lake) > done or job.poll() is not None, 600, "a restart")
        kill_job(job)  # second kill -9
        produce_lines(broker.bootstrap, "movielog", chunks[2], partitions=PARTITIONS)

        job = start_job(home, broker.bootstrap, "movielog", log)
        n = len(produced.lines)
        wait_for(lambda: bronze_count(lake) >= n or job.poll() is not None, 900, f"{n} lines")
        time.sleep(2.0)  # a few more triggers: nothing else may arrive
        assert job.poll() is None, log.read_text()[-3000:]
    finally:
        if job is not None and job.poll() is None:
            kill_job(job)
        stop_broker(broker)
    assert_bronze_is(lake, expected_positions(*chunks))
    quarantine = lake.read("quarantine_events")
    assert quarantine.num_rows == len(produced.bad)
    assert sorted(quarantine["reason"].to_pylist()) == sorted(produced.bad.values())


def recreate_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Delete ``topic`` and create it again at once (its offsets restart at 0)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics([topic])
        deadline = time.monotonic() + 30
        while True:
            try:
                admin.create_topics([NewTopic(topic, partitions, 1)])
                return
            except TopicAlreadyExistsError:  # still being deleted
                assert time.monotonic() < deadline, "the topic was never deleted"
                time.sleep(0.05)
    finally:
        admin.close()


def test_a_topic_recreated_under_a_running_query_stops_it_naming_the_lost_range(
    spark: Any, broker: BrokerProcess, topic: str, tmp_path: Path
) -> None:
    import threading

    from flixlake.streaming.harness import SpeedLayerError
    from flixlake.streaming.job import run_speed_layer

    lines = [f"{stamp(DAY)},{i + 1},GET /data/m/m{i}/1.mpg" for i in range(300)]
    produce_lines(broker.bootstrap, topic, lines, partitions=PARTITIONS)
    settings = stream_settings(tmp_path, broker.bootstrap, topic, land_served=False)
    lake = Lake(settings.lake_root)
    failures: list[BaseException] = []

    def recreate_when_read() -> None:
        try:
            wait_for(lambda: bronze_count(lake) >= len(lines), 600, "the first lines")
            recreate_topic(broker.bootstrap, topic, PARTITIONS)
            produce_lines(broker.bootstrap, topic, lines[:30], partitions=PARTITIONS)
        except BaseException as exc:
            failures.append(exc)

    helper = threading.Thread(target=recreate_when_read, daemon=True)
    helper.start()
    with pytest.raises(SpeedLayerError) as stopped:
        run_speed_layer(spark, settings, lake, timeout=900)
    helper.join(timeout=60)
    assert not failures, failures
    message = str(stopped.value)
    assert f"data loss on Kafka topic {topic}" in message
    assert "offset was changed from 100 to 10" in message  # the lost range, per partition
    assert bronze_count(lake) == len(lines)  # nothing of the new topic was taken silently


def test_a_stream_started_before_the_broker_waits_and_then_reads_everything(
    spark: Any, tmp_path: Path
) -> None:
    port = free_port()
    produced = make_lines(n_valid=400, seed=11, bad_each=1, copies=2)
    settings = stream_settings(tmp_path, f"127.0.0.1:{port}", "movielog")
    lake = Lake(settings.lake_root)
    run = start_speed_layer(spark, settings, lake, quiet=True)
    try:
        time.sleep(4.0)  # several triggers with nobody listening
        assert run.query.isActive and run.query.exception() is None
        assert bronze_count(lake) == 0
        with running_broker(port, "movielog", PARTITIONS, log_dir=tmp_path / "kafka") as b:
            produce_lines(b.bootstrap, "movielog", produced.lines, partitions=PARTITIONS)
            n = len(produced.lines)
            wait_for(lambda: bronze_count(lake) >= n, 600, f"{n} lines", run)
            stop(run)
    finally:
        if run.query.isActive:
            run.stop(graceful=False)
    assert_bronze_is(lake, expected_positions(produced.lines))


def test_a_briefly_unreachable_broker_neither_crashes_nor_loses_data(
    spark: Any, proxied_broker: tuple[BrokerProcess, TcpProxy], tmp_path: Path
) -> None:
    broker, proxy = proxied_broker
    create_topic(f"127.0.0.1:{broker.port}", "movielog", PARTITIONS)
    produced = make_lines(n_valid=1800, seed=13, bad_each=1, copies=0)
    first, later = produced.lines[:1500], produced.lines[1500:]
    produce_lines(broker.bootstrap, "movielog", first, partitions=PARTITIONS)
    settings = stream_settings(tmp_path, broker.bootstrap, "movielog", max_events_per_trigger=150)
    lake = Lake(settings.lake_root)
    run = start_speed_layer(spark, settings, lake, quiet=True)
    try:
        wait_for(lambda: bronze_count(lake) >= 150, 600, "the first batch", run)
        proxy.cut()
        time.sleep(4.0)
        assert run.query.isActive and run.query.exception() is None
        proxy.restore()
        wait_for(lambda: bronze_count(lake) >= len(first), 600, "the backlog", run)
        produce_lines(broker.bootstrap, "movielog", later, partitions=PARTITIONS)
        n = len(first) + len(later)
        wait_for(lambda: bronze_count(lake) >= n, 600, f"{n} lines", run)
        time.sleep(1.0)
    finally:
        stop(run)
    assert_bronze_is(lake, expected_positions(first, later))


def topic_partitions(bootstrap: str, topic: str) -> int:
    """How many partitions the broker reports for ``topic`` (0: no such topic yet)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=5000)
    try:
        found = [t for t in admin.describe_topics([topic]) if not t.get("error_code")]
        return len(found[0]["partitions"]) if found else 0
    finally:
        admin.close()


def test_flixlake_broker_stops_kafka_on_sigterm(tmp_path: Path) -> None:
    """A service manager's SIGTERM stops `flixlake broker` and the Kafka JVM it started."""
    import re

    port = free_port()
    command = [str(Path(sys.executable).parent / "flixlake"), "broker", f"--port={port}"]
    env = {**os.environ, "FLIXLAKE_HOME": str(tmp_path / "home"), "FLIXLAKE_ENV": "test"}
    cli = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert cli.stdout is not None
        ready = ""
        deadline = time.monotonic() + 180
        while "broker ready at" not in ready:
            assert cli.poll() is None and time.monotonic() < deadline, "broker never got ready"
            ready = cli.stdout.readline()
        kafka_pid = int(re.search(r"Apache Kafka, pid (\d+)", ready).group(1))  # type: ignore[union-attr]
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=120) == 0
        deadline = time.monotonic() + 30
        while Path(f"/proc/{kafka_pid}").exists():
            assert time.monotonic() < deadline, f"Kafka (pid {kafka_pid}) outlived its CLI"
            time.sleep(0.2)
    finally:
        if cli.poll() is None:
            cli.kill()


def test_serve_broker_runs_until_stopped_and_creates_the_topic(tmp_path: Path) -> None:
    import threading

    from flixlake.ops.broker import serve_broker, wait_until_ready

    port, stop_event = free_port(), threading.Event()
    server = threading.Thread(
        target=serve_broker,
        kwargs={
            "port": port,
            "topic": "movielog",
            "partitions": 2,
            "stop": stop_event,
            "log_dir": tmp_path / "kafka",
        },
        daemon=True,
    )
    server.start()
    try:
        wait_until_ready(f"127.0.0.1:{port}", timeout=30)
        deadline = time.monotonic() + 30
        while topic_partitions(f"127.0.0.1:{port}", "movielog") != 2:
            assert time.monotonic() < deadline, "topic movielog with 2 partitions never appeared"
            time.sleep(0.2)
    finally:
        stop_event.set()
        server.join(timeout=30)
    assert not server.is_alive()
    with pytest.raises(BrokerError):  # the broker is gone
        wait_until_ready(f"127.0.0.1:{port}", timeout=2)


def test_a_query_that_cannot_start_stops_the_one_already_running(
    spark: Any, tmp_path: Path
) -> None:
    """The served query refuses a fresh checkpoint for batches the lake already holds; the
    events query, started first, must not be left running."""
    from flixlake.serving.telemetry import encode_answer
    from flixlake.streaming.harness import SpeedLayerError
    from flixlake.streaming.job import run_speed_layer
    from flixlake.streaming.served import land_records, served_query_name

    settings = stream_settings(
        tmp_path / "home", f"127.0.0.1:{free_port()}", "movielog-none", query_name="stuck"
    )
    lake = Lake(settings.lake_root)
    record = encode_answer(
        1800000000.0, 1, 200, 1.0, "r-1", "control", "m1", b"a,b", "s", "default"
    )[2]
    landed = land_records([record], "served", [0], [0], "b", dt.datetime.now(UTC))
    lake.append("served_recommendations", landed.served, f"served:{served_query_name(settings)}", 0)

    with pytest.raises(SpeedLayerError, match="already holds micro-batches"):
        run_speed_layer(spark, settings, lake, timeout=30)
    assert [q.name for q in spark.streams.active if q.name == "stuck"] == []
