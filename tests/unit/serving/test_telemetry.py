"""What the service puts on Kafka per answer: the MLiP line and the served record, exactly."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from flixlake.contract.logformat import EventType, parse_line
from flixlake.contract.served_record import ServedRecord
from flixlake.serving.telemetry import AnswerEncoder, encode_answer

WHEN = dt.datetime(2026, 11, 23, 11, 59, 58, 250_000, tzinfo=dt.UTC).timestamp()
IDS = b"the+matrix+1999,up+2009,amelie+2001"


def test_an_answer_becomes_an_mlip_line_and_a_served_record() -> None:
    key, line, record = AnswerEncoder("reco-1:8082", "exp-a").encode(
        WHEN, 42, 200, 3.6, "3f2a-1b", "canary", "als-1", IDS
    )
    assert key == b"42"
    assert line == (
        b"2026-11-23T11:59:58,42,recommendation request reco-1:8082, status 200, "
        b"result: the+matrix+1999, up+2009, amelie+2001, 4 ms"
    )
    event = parse_line(line)
    assert event.event_type == EventType.RECO and event.user_id == 42
    assert event.reco_results == ("the+matrix+1999", "up+2009", "amelie+2001")
    served = ServedRecord.model_validate_json(record)
    assert (served.request_id, served.user_id, served.variant, served.model_version) == (
        "3f2a-1b",
        42,
        "canary",
        "als-1",
    )
    assert served.items == ["the+matrix+1999", "up+2009", "amelie+2001"]
    assert served.time == dt.datetime(2026, 11, 23, 11, 59, 58, 250_000, tzinfo=dt.UTC)
    assert (served.latency_ms, served.status, served.server, served.experiment) == (
        3.6,
        200,
        "reco-1:8082",
        "exp-a",
    )


@pytest.mark.parametrize(
    ("when", "body", "request_id", "model_version"),
    [
        (WHEN, IDS, "r-1", "als-1"),
        (WHEN, b"", "r-2", ""),  # no items
        (WHEN, b'a"b,c\\d', "r-3", "als-1"),  # JSON escapes in the items
        (WHEN, "café,x".encode(), "r-4", "m\u00e9"),  # non-ASCII
        (WHEN, IDS, 'r"5', "als-1"),  # an odd request id
        (1795860000.9999996, IDS, "r-6", "als-1"),  # rounds up into the next second
        (1795860000.0, IDS, "r-7", "als-1"),
    ],
)
def test_the_fast_encoder_matches_the_plain_encoding(
    when: float, body: bytes, request_id: str, model_version: str
) -> None:
    encoder = AnswerEncoder("reco-1:8082", "exp-a")
    encoder.encode(when - 1.5, 7, 200, 1.0, "warm", "control", "als-1", IDS)  # a cached second
    args = (when, 7, 200, 12.25, request_id, "control", model_version, body)
    fast = encoder.encode(*args)
    assert fast == encode_answer(*args, "reco-1:8082", "exp-a")
    assert json.loads(fast[2])["items"] == (body.decode().split(",") if body else [])
