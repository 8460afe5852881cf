"""The one parser: every contract line kind parses, every bad kind is rejected with its reason."""

from __future__ import annotations

import datetime as dt

import pytest

from flixlake.contract.logformat import (
    EventType,
    RejectReason,
    format_rate,
    format_reco,
    format_watch,
    parse_line,
)


def test_watch_line() -> None:
    event = parse_line("2026-11-22T08:54:03,42,GET /data/m/the+matrix+1999/17.mpg")
    assert event.ok
    assert event.event_type is EventType.WATCH
    assert event.event_time == dt.datetime(2026, 11, 22, 8, 54, 3)
    assert (event.user_id, event.movie_id, event.minute) == (42, "the+matrix+1999", 17)


def test_rate_line_and_fractional_seconds() -> None:
    event = parse_line("2026-11-22T08:54:03.25,7,GET /rate/heat+1995=4")
    assert event.event_type is EventType.RATE
    assert event.event_time == dt.datetime(2026, 11, 22, 8, 54, 3, 250000)
    assert (event.user_id, event.movie_id, event.rating) == (7, "heat+1995", 4)


def test_reco_line_keeps_the_served_list() -> None:
    line = (
        "2026-11-22T08:54:03,9,recommendation request 17645-team07.isri.cmu.edu:8082, "
        "status 200, result: heat+1995, alien+1979, up+2009, 231 ms"
    )
    event = parse_line(line)
    assert event.event_type is EventType.RECO
    assert event.reco_server == "17645-team07.isri.cmu.edu:8082"
    assert event.reco_status == 200
    assert event.reco_results == ("heat+1995", "alien+1979", "up+2009")
    assert event.reco_response_ms == 231.0


@pytest.mark.parametrize(
    ("line", "status", "error"),
    [
        (
            "2026-11-22T08:54:03,9,recommendation request 17645-team01.isri.cmu.edu:8082, "
            "status 0, result: java.net.SocketTimeoutException: Read timed out, 800 ms",
            0,
            "java.net.SocketTimeoutException: Read timed out",
        ),
        (
            "2026-11-22T08:54:03,9,recommendation request s1:8082, status 0, "
            "result: java.net.ConnectException: Connection refused (Connection refused), 6 ms",
            0,
            "java.net.ConnectException: Connection refused (Connection refused)",
        ),
        (
            "2026-11-22T08:54:03,9,recommendation request s1:8082, status 500, "
            "result: Internal Server Error, 12 ms",
            500,
            "Internal Server Error",
        ),
    ],
)
def test_failure_telemetry_is_a_reco_event_without_a_result_list(
    line: str, status: int, error: str
) -> None:
    event = parse_line(line)
    assert event.ok, event.reject_reason
    assert event.event_type is EventType.RECO
    assert event.reco_status == status
    assert event.reco_results is None
    assert event.reco_error == error
    assert event.reco_response_ms is not None


@pytest.mark.parametrize(
    ("line", "movie"),
    [
        (
            "2026-11-22T08:54:03,42,GET /rate/léon+the+professional+1994=4",
            "léon+the+professional+1994",
        ),
        ("2026-11-22T08:54:03,42,GET /data/m/á+köldum+klaka+1995/3.mpg", "á+köldum+klaka+1995"),
        ("2026-11-22T08:54:03,42,GET /rate/千と千尋の神隠し+2001=5", "千と千尋の神隠し+2001"),
    ],
)
def test_movie_ids_accept_unicode_letters(line: str, movie: str) -> None:
    event = parse_line(line)
    assert event.ok, event.reject_reason
    assert event.movie_id == movie


def test_served_unicode_ids_stay_a_result_list() -> None:
    event = parse_line(
        "2026-11-22T08:54:03,9,recommendation request s:8082, status 200, "
        "result: léon+the+professional+1994, heat+1995, 40 ms"
    )
    assert event.reco_results == ("léon+the+professional+1994", "heat+1995")
    assert event.reco_error is None


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"2026-11-22T08:54:03,42,GET /data/m/\xff\xfe/1.mpg", RejectReason.INVALID_UTF8),
        ("", RejectReason.EMPTY),
        ("2026-11-22T08:54:03,42", RejectReason.FIELD_COUNT),
        ("yesterday,42,GET /rate/heat+1995=4", RejectReason.BAD_TIME),
        ("2026-13-45T08:54:03,42,GET /rate/heat+1995=4", RejectReason.BAD_TIME),
        ("2026-11-22T08:54:03,-3,GET /rate/heat+1995=4", RejectReason.BAD_USER),
        ("2026-11-22T08:54:03,99999999999,GET /rate/heat+1995=4", RejectReason.BAD_USER),
        ("2026-11-22T08:54:03,42,POST /rate/heat+1995=4", RejectReason.UNKNOWN_VERB),
        ("2026-11-22T08:54:03,42,GET /rate/heat+1995=0", RejectReason.BAD_RATING),
        ("2026-11-22T08:54:03,42,GET /rate/heat+1995=7", RejectReason.BAD_RATING),
        ("2026-11-22T08:54:03,42,GET /data/m/heat+1995/-1.mpg", RejectReason.BAD_MINUTE),
        ("2026-11-22T08:54:03,42,GET /data/m/heat+1995/1.mp", RejectReason.BAD_MINUTE),
        ("2026-11-22T08:54:03,42,GET /data/m/ /1.mpg", RejectReason.BAD_MOVIE),
        ("2026-11-22T08:54:03,42,GET /rate/heat_1995=4", RejectReason.BAD_MOVIE),
        ("2026-11-22T08:54:03,42,GET /rate/+heat+1995=4", RejectReason.BAD_MOVIE),
        ("2026-11-22T08:54:03,42,GET /data/m/héat 1995/1.mpg", RejectReason.BAD_MOVIE),
        (
            "2026-11-22T08:54:03,42,recommendation request x, status 2000, result: a, 5 ms",
            RejectReason.BAD_RECO,
        ),
        (
            "2026-11-22T08:54:03,42,recommendation request x, status 0, result: timed out",
            RejectReason.BAD_RECO,
        ),
        ("2026-11-22T08:54:03,42,recommendation request x, status ok", RejectReason.BAD_RECO),
        ("2026-11-22T08:54:03,42,GET /data/m/heat+19" + "9" * 9000, RejectReason.TOO_LONG),
    ],
)
def test_bad_lines_name_their_reason(line: str | bytes, reason: RejectReason) -> None:
    event = parse_line(line)
    assert not event.ok
    assert event.reject_reason is reason
    assert event.event_type is None


def test_formatters_round_trip_through_the_parser() -> None:
    t = dt.datetime(2026, 1, 2, 3, 4, 5)
    assert parse_line(format_watch(t, 5, "up+2009", 3)).minute == 3
    assert parse_line(format_rate(t, 5, "up+2009", 2)).rating == 2
    reco = parse_line(format_reco(t, 5, "s1:8082", 200, ["a+1", "b+2"], 12))
    assert reco.reco_results == ("a+1", "b+2")
    assert reco.reco_response_ms == 12.0


def test_reco_with_empty_result_list_is_valid() -> None:
    event = parse_line(
        "2026-11-22T08:54:03,9,recommendation request s:8082, status 500, result: , 3 ms"
    )
    assert event.ok
    assert (event.reco_results, event.reco_error) == (None, "")


@pytest.mark.parametrize(
    ("line", "status", "ms"),
    [
        (
            "2026-11-22T08:54:03,9,recommendation request 17645-team12.isri.cmu.edu:8082, "
            "status 0, result: java.net.SocketTimeoutException: Read timed out, 800 ms",
            0,
            800.0,
        ),
        (
            "2026-11-22T08:54:03,9,recommendation request s:8082, status 0, "
            "result: java.net.ConnectException: Connection refused (Connection refused), 3 ms",
            0,
            3.0,
        ),
        (
            "2026-11-22T08:54:03,9,recommendation request s:8082, status 503, "
            "result: HTTP 503 Service Unavailable, 12 ms",
            503,
            12.0,
        ),
    ],
)
def test_failed_calls_are_valid_telemetry_without_result_ids(
    line: str, status: int, ms: float
) -> None:
    """The contract: failure lines are valid, they are what availability monitoring reads."""
    event = parse_line(line)
    assert event.ok, event.reject_reason
    assert event.event_type == EventType.RECO
    assert (event.reco_status, event.reco_results, event.reco_response_ms) == (status, None, ms)
    assert event.reco_error and event.reco_error in line


def test_a_200_whose_result_is_not_movie_ids_is_still_bad() -> None:
    line = "2026-11-22T08:54:03,9,recommendation request s:8082, status 200, result: oops!?, 3 ms"
    assert parse_line(line).reject_reason is RejectReason.BAD_RECO
