"""``flixlake simulate`` against a real broker: every line sent arrives, faults are what they say."""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import time

import pytest
from kafka import KafkaConsumer, TopicPartition

from flixlake.contract.kafka import create_topic
from flixlake.contract.logformat import EventType, parse_line
from flixlake.ops.broker import BrokerProcess
from flixlake.sim.generate import BAD_KINDS
from flixlake.sim.simulate import FAULT_HEADER, FaultSpecError, Simulator, parse_faults, simulate
from flixlake.sim.world import World

EVENTS = 2_000


def _read_all(bootstrap: str, topic: str, want: int, timeout: float = 15.0) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        records: list = []
        deadline = time.monotonic() + timeout
        while len(records) < want and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        # nothing beyond what was sent
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
        return records
    finally:
        consumer.close()


def test_simulate_streams_exact_count_with_faults(broker: BrokerProcess, topic: str) -> None:
    faults = parse_faults("bad=0.05,out_of_order=0.02,burst=0.2,unknown=0.02,poison=0.01")
    progress: list[dict] = []
    summary = simulate(
        broker.bootstrap,
        topic,
        rate=4_000,
        n_users=20_000,
        n_movies=300,
        seed=3,
        events=EVENTS,
        faults=faults,
        progress=progress.append,
    )
    assert summary["sent"] == EVENTS
    assert summary["elapsed_s"] < 10
    records = _read_all(broker.bootstrap, topic, EVENTS)
    assert len(records) == EVENTS

    by_fault: dict[str | None, int] = {}
    bad_rejected = 0
    for rec in records:
        headers = dict(rec.headers or [])
        fault = headers[FAULT_HEADER].decode() if FAULT_HEADER in headers else None
        by_fault[fault] = by_fault.get(fault, 0) + 1
        parsed = parse_line(rec.value)
        if fault is None or fault in ("out_of_order", "unknown_user", "unknown_movie", "poison"):
            assert parsed.ok, (fault, rec.value, parsed.reject_reason)
            assert rec.key.decode() == str(parsed.user_id)  # keyed by user id
        elif fault == "duplicate":
            assert parsed.ok  # the bronze dedup rejects it, not the parser
        else:
            assert fault in BAD_KINDS
            assert not parsed.ok, (fault, rec.value)
            assert parsed.reject_reason == BAD_KINDS[fault], (fault, rec.value)
            bad_rejected += 1
    assert bad_rejected > 0
    assert by_fault.get("poison", 0) == summary["faults"].get("poison", 0)
    assert by_fault.get("out_of_order", 0) == summary["faults"].get("out_of_order", 0) > 0
    good = sum(summary["lines"].values())
    line_faults = sum(v for k, v in summary["faults"].items() if k not in ("burst", "out_of_order"))
    assert good + line_faults == EVENTS
    assert summary["lines"]["watch"] > 0 and summary["lines"]["reco"] > 0
    assert summary["reco_requests"] == {"ok": 0, "failed": 0, "taken": 0}


def test_simulate_counts_unreachable_service(broker: BrokerProcess, topic: str) -> None:
    summary = simulate(
        broker.bootstrap,
        topic,
        rate=2_000,
        n_users=5_000,
        n_movies=100,
        seed=4,
        events=200,
        serve_url="http://127.0.0.1:9/",  # nothing listens: every request fails, never fatal
    )
    assert summary["sent"] == 200
    assert summary["reco_requests"]["failed"] > 0
    assert summary["reco_requests"]["ok"] == 0
    # like the course's infrastructure, each failed call is logged: status 0 and the error
    recos = [
        parse_line(r.value)
        for r in _read_all(broker.bootstrap, topic, 200)
        if b"recommendation request" in r.value
    ]
    assert len(recos) == summary["lines"]["reco"] > 0
    assert all(e.ok and e.reco_status == 0 and e.reco_results is None for e in recos)
    assert all(e.reco_error and "Connection refused" in e.reco_error for e in recos)


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("bad=0.01,oops=0.1", "'oops'"),
        ("bad=2", "'bad'"),
        ("poison", "'poison'"),
        ("burst=x", "'burst'"),
    ],
)
def test_bad_fault_spec_names_the_key(spec: str, named: str) -> None:
    with pytest.raises(FaultSpecError, match=named):
        parse_faults(spec)


def test_fault_spec_parses() -> None:
    spec = parse_faults("bad=0.01, out_of_order=0.02,burst=0.05,unknown=0.01,poison=0.001")
    assert (spec.bad, spec.out_of_order, spec.burst, spec.unknown, spec.poison) == (
        0.01,
        0.02,
        0.05,
        0.01,
        0.001,
    )


@pytest.mark.parametrize("minute_seconds", [60.0, 10.0])
def test_a_visits_minutes_are_minute_seconds_apart(minute_seconds: float) -> None:
    """Each visit's watched-minute lines come ``minute_seconds`` apart in log time (and order)."""
    world = World.build(200, 80, 3)
    sim = Simulator(world, 3, parse_faults(""), minute_seconds=minute_seconds)
    start = 1_800_000_000.0
    lines = [ln for t in range(0, 400) for ln in sim.next_lines(5, start + t)]
    times: dict[tuple[int, str], list[tuple[int, dt.datetime]]] = {}
    for ln in lines:
        event = parse_line(ln.value)
        if event.event_type == EventType.WATCH:
            assert event.user_id is not None and event.movie_id is not None
            assert event.minute is not None and event.event_time is not None
            times.setdefault((event.user_id, event.movie_id), []).append(
                (event.minute, event.event_time)
            )
    gaps = [
        (b_time - a_time).total_seconds()
        for minutes in times.values()
        for (a_min, a_time), (b_min, b_time) in itertools.pairwise(sorted(minutes))
        if b_min == a_min + 1
    ]
    assert len(gaps) > 20
    assert set(gaps) == {minute_seconds}  # whole seconds: the log's precision


def test_minute_seconds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="minute_seconds"):
        Simulator(World.build(10, 10, 1), 1, parse_faults(""), minute_seconds=0)


def test_a_user_limited_simulator_names_when_its_next_line_is_due() -> None:
    """With every user mid-visit, ``next_lines`` comes up short and ``next_due`` is later."""
    world = World.build(5, 40, 2)
    sim = Simulator(world, 2, parse_faults(""), minute_seconds=10.0)
    start = 1_800_000_000.0
    first = sim.next_lines(100, start)
    assert 0 < len(first) < 100 and sim.user_limited
    assert sim.n_active == int(sim.active.sum()) <= 5
    due = sim.next_due()
    assert due is not None and due > start
    assert sim.next_lines(100, due - 0.001) == []  # nothing before it
    assert len(sim.next_lines(100, due)) >= 1  # and something at it


def test_a_user_limited_run_sleeps_until_lines_are_due(broker: BrokerProcess, topic: str) -> None:
    """30 users cannot give 3,000 lines/s: the loop wakes about once per line sent, not
    thousands of times a second (a polling loop would spin here and burn a core)."""
    stop = threading.Event()
    timer = threading.Timer(4.0, stop.set)
    timer.start()
    try:
        summary = simulate(
            broker.bootstrap,
            topic,
            rate=3_000,
            n_users=30,
            n_movies=50,
            seed=5,
            stop=stop,
            minute_seconds=1.0,
        )
    finally:
        timer.cancel()
    assert summary["user_limited"] is True
    assert summary["sent"] > 30  # every user started a visit, and visits went on
    # each wake sends a line, but for one per second of progress reporting and the first few
    assert summary["wakeups"] <= summary["sent"] + summary["elapsed_s"] + 5


def test_another_stream_seed_gives_other_visits_in_the_same_world(
    broker: BrokerProcess, topic: str
) -> None:
    """``--stream-seed`` changes who watches what, never the world (its users and movies)."""
    world = World.build(300, 40, 6)
    runs = []
    for stream_seed in (None, 6001):
        name = f"{topic}-{stream_seed}"
        assert create_topic(broker.bootstrap, name, partitions=3) == 3
        simulate(broker.bootstrap, name, 4_000, 300, 40, 6, events=300, stream_seed=stream_seed)
        lines = [parse_line(r.value) for r in _read_all(broker.bootstrap, name, 300)]
        runs.append([(e.user_id, e.movie_id) for e in lines if e.event_type == EventType.WATCH])
    for watches in runs:
        assert len(watches) > 100
        assert {m for _, m in watches} <= set(world.movie_ids)
        assert {u for u, _ in watches} <= set(range(1, 301))
    assert runs[0] != runs[1]
    assert set(runs[0]) != set(runs[1])
