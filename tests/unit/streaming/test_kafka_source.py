"""Planning logic of the Kafka source, against a fake consumer that behaves like a broker."""

from __future__ import annotations

import pickle
import time
from typing import Any

import pytest
from kafka import TopicPartition
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadMaxRows

from flixlake.contract.kafka import BrokerError, port_of
from flixlake.streaming.kafka_source import (
    KafkaRange,
    KafkaSourceError,
    KafkaSourceOptions,
    KafkaSplit,
    KafkaStreamReader,
    allocate,
    offset_dict,
    offsets_of,
    plan_splits,
    probe_ends,
    split_ranges,
)

TOPIC = "movielog"


class FakeRecord:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class FakeConsumer:
    """A partition holds offsets ``0..n-1``; each fetch returns at most ``fetch_records``."""

    def __init__(
        self,
        sizes: dict[int, int],
        reported_end: dict[int, int],
        fetch_records: int = 300,
        fail: bool = False,
    ) -> None:
        self.sizes = {TopicPartition(TOPIC, p): n for p, n in sizes.items()}
        self.reported = {TopicPartition(TOPIC, p): n for p, n in reported_end.items()}
        self.fetch_records = fetch_records
        self.fail = fail
        self.positions: dict[Any, int] = {}
        self.paused: set[Any] = set()
        self.polls = 0
        self.grown: dict[Any, int] = {}
        self.grow_per_poll = 0  # a producer appending while we probe

    def _grow(self) -> None:
        for tp in self.sizes:
            self.sizes[tp] += self.grow_per_poll

    def partitions_for_topic(self, topic: str) -> set[int]:
        if self.fail:
            raise ConnectionError("broker down")
        return {tp.partition for tp in self.sizes}

    def assign(self, partitions: list[Any]) -> None:
        self.positions = {tp: self.positions.get(tp, 0) for tp in partitions}

    def seek(self, tp: Any, offset: int) -> None:
        self.positions[tp] = offset

    def position(self, tp: Any) -> int:
        return self.positions[tp]

    def end_offsets(self, partitions: list[Any], timeout_ms: int | None = None) -> dict[Any, int]:
        return {tp: self.reported[tp] for tp in partitions}

    def highwater(self, tp: Any) -> int | None:
        # what a fetch response reported; None models a client that has no such hint
        return self.grown.get(tp)

    def pause(self, *partitions: Any) -> None:
        self.paused.update(partitions)

    def resume(self, *partitions: Any) -> None:
        self.paused.difference_update(partitions)

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Any]]:
        self.polls += 1
        out = {}
        if self.grow_per_poll:
            self.grown = dict(self.sizes)  # the high-watermark this fetch reports
            self._grow()
        for tp, pos in self.positions.items():
            if tp in self.paused or pos >= self.sizes[tp]:
                continue  # a real broker just answers an empty fetch past the end
            upto = min(self.sizes[tp], pos + self.fetch_records)
            out[tp] = [FakeRecord(o) for o in range(pos, upto)]
            self.positions[tp] = upto
        return out

    def close(self, **kwargs: Any) -> None:
        pass


def _probe(consumer: FakeConsumer, starts: dict[int, int], cap: int | None) -> dict[int, int]:
    ends = probe_ends(
        consumer,
        {TopicPartition(TOPIC, p): s for p, s in starts.items()},
        cap,
        poll_timeout_ms=10,
        deadline=time.monotonic() + 10,
    )
    return {tp.partition: e for tp, e in ends.items()}


def test_probe_finds_the_real_end_when_the_broker_under_reports_it() -> None:
    # tansu 0.6: reported end = base offset of the last record batch + 1
    consumer = FakeConsumer({0: 5000, 1: 37}, {0: 4754, 1: 1})
    assert _probe(consumer, {0: 0, 1: 0}, None) == {0: 5000, 1: 37}


def test_probe_rescans_from_the_start_when_the_reported_end_is_too_high() -> None:
    consumer = FakeConsumer({0: 100}, {0: 9999})
    assert _probe(consumer, {0: 40}, None) == {0: 100}


def test_probe_stops_at_the_cap_and_never_before_the_start() -> None:
    consumer = FakeConsumer({0: 5000, 1: 0, 2: 12}, {0: 5000, 1: 0, 2: 12})
    assert _probe(consumer, {0: 10, 1: 0, 2: 12}, 100) == {0: 110, 1: 0, 2: 12}


def test_probe_does_not_chase_data_arriving_while_it_probes() -> None:
    consumer = FakeConsumer({0: 1000}, {0: 1000}, fetch_records=100)
    consumer.grow_per_poll = 50  # a busy producer: every fetch sees more
    ends = _probe(consumer, {0: 0}, None)
    assert 1000 <= ends[0] <= 1100  # stops near the end it first saw, not at the deadline
    assert consumer.polls < 10


def test_probe_leaves_partitions_resumed() -> None:
    consumer = FakeConsumer({0: 50, 1: 10}, {0: 50, 1: 10})
    _probe(consumer, {0: 0, 1: 0}, None)
    assert consumer.paused == set()


def test_allocate_shares_the_limit_fairly_and_uses_all_of_it() -> None:
    granted = allocate({0: 900, 1: 50, 2: 600}, 1000)
    assert granted[1] == 50
    assert sum(granted.values()) == 1000
    assert abs(granted[0] - granted[2]) <= 2
    assert allocate({0: 5, 1: 0}, 1000) == {0: 5, 1: 0}
    assert allocate({0: 5, 1: 7}, None) == {0: 5, 1: 7}
    assert sum(allocate({0: 1, 1: 1, 2: 1}, 2).values()) == 2


def test_split_ranges_cuts_large_ranges_and_covers_every_offset_once() -> None:
    ranges = split_ranges(TOPIC, {0: 10}, {0: 35, 1: 3, 2: 0}, max_records=10)
    covered = [(r.partition, o) for r in ranges for o in range(r.start, r.end)]
    expected = [(0, o) for o in range(10, 35)] + [(1, o) for o in range(3)]
    assert sorted(covered) == sorted(expected)
    assert len(covered) == len(set(covered))
    assert max(r.end - r.start for r in ranges) == 10


def test_plan_splits_packs_small_ranges_and_never_repeats_a_partition() -> None:
    small = plan_splits(TOPIC, {}, {0: 30, 1: 20, 2: 10}, max_records=1000, min_records=100)
    assert small == [
        KafkaSplit(
            (KafkaRange(TOPIC, 0, 0, 30), KafkaRange(TOPIC, 1, 0, 20), KafkaRange(TOPIC, 2, 0, 10))
        )
    ]
    big = plan_splits(TOPIC, {}, {0: 250, 1: 40}, max_records=100, min_records=60)
    assert [[(r.partition, r.start, r.end) for r in s.ranges] for s in big] == [
        [(0, 0, 100)],
        [(0, 100, 200)],
        [(0, 200, 250), (1, 0, 40)],
    ]
    for split in big + small:
        assert len({r.partition for r in split.ranges}) == len(split.ranges)


def test_offset_dicts_round_trip_with_string_keys() -> None:
    assert offset_dict({2: 5, 0: 7}) == {"0": 7, "2": 5}
    assert offsets_of({"0": 7, "2": 5}) == {0: 7, 2: 5}


def test_options_are_validated_with_the_option_name() -> None:
    opts = KafkaSourceOptions.parse(
        {"bootstrapservers": "h:1", "topic": "t", "maxEventsPerTrigger": "500"}
    )
    assert (opts.bootstrap_servers, opts.topic, opts.max_events_per_trigger) == ("h:1", "t", 500)
    with pytest.raises(KafkaSourceError, match="topic"):
        KafkaSourceOptions.parse({"bootstrapServers": "h:1"})
    with pytest.raises(KafkaSourceError, match="maxEventsPerTrigger"):
        KafkaSourceOptions.parse(
            {"bootstrapServers": "h:1", "topic": "t", "maxEventsPerTrigger": "x"}
        )
    with pytest.raises(KafkaSourceError, match="minRecordsPerSplit"):
        KafkaSourceOptions.parse(
            {
                "bootstrapServers": "h:1",
                "topic": "t",
                "minRecordsPerSplit": "9",
                "maxRecordsPerSplit": "5",
            }
        )
    with pytest.raises(KafkaSourceError, match="startingOffsets"):
        KafkaSourceOptions.parse(
            {"bootstrapServers": "h:1", "topic": "t", "startingOffsets": "now"}
        )


def _reader(consumer: FakeConsumer, max_events: int | None = None) -> KafkaStreamReader:
    options = {"bootstrapServers": "127.0.0.1:1", "topic": TOPIC, "probeTimeoutMs": "10"}
    if max_events:
        options["maxEventsPerTrigger"] = str(max_events)
    reader = KafkaStreamReader(KafkaSourceOptions.parse(options))
    reader._consumer = consumer  # the planner's consumer, normally created on first use
    return reader


def test_latest_offset_plans_exactly_what_was_fetched_within_the_limit() -> None:
    reader = _reader(FakeConsumer({0: 1000, 1: 30}, {0: 800, 1: 1}), max_events=500)
    limit = reader.getDefaultReadLimit()
    assert limit == ReadMaxRows(500)
    first = reader.latestOffset({}, limit)
    assert first == {"0": 470, "1": 30}
    second = reader.latestOffset(first, limit)
    assert second == {"0": 970, "1": 30}
    assert reader.latestOffset(second, ReadAllAvailable()) == {"0": 1000, "1": 30}


def test_latest_offset_is_an_empty_trigger_when_the_broker_is_down() -> None:
    reader = _reader(FakeConsumer({0: 10}, {0: 10}, fail=True))
    assert reader.latestOffset({"0": 3}, ReadAllAvailable()) == {"0": 3}
    assert reader._consumer is None  # dropped, rebuilt on the next trigger


def test_reader_and_ranges_pickle_without_the_planner_consumer() -> None:
    reader = _reader(FakeConsumer({0: 10}, {0: 10}))
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._consumer is None and clone.options == reader.options
    split = KafkaSplit((KafkaRange(TOPIC, 1, 5, 9),))
    assert pickle.loads(pickle.dumps(split)) == split
    assert reader.partitions({"1": 5}, {"1": 9}) == [split]


def test_starting_offsets_latest_begins_at_the_probed_end() -> None:
    options = {"bootstrapServers": "127.0.0.1:1", "topic": TOPIC, "startingOffsets": "latest"}
    reader = KafkaStreamReader(KafkaSourceOptions.parse(options))
    reader._consumer = FakeConsumer({0: 120, 1: 7}, {0: 100, 1: 1})
    assert reader.initialOffset() == {"0": 120, "1": 7}
    earliest = KafkaStreamReader(
        KafkaSourceOptions.parse({**options, "startingOffsets": "earliest"})
    )
    assert earliest.initialOffset() == {}  # every partition from its first offset


def test_port_of_reads_the_first_bootstrap_server() -> None:
    assert port_of("127.0.0.1:19092,other:1") == 19092
    with pytest.raises(BrokerError, match="host:port"):
        port_of("localhost")
