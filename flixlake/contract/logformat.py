"""The MLiP log format: the one parser shared by file ingest, the stream and the tests.

A line is ``<time>,<userid>,<request>`` where the request is one of::

    GET /data/m/<movieid>/<minute>.mpg                       a watched minute
    GET /rate/<movieid>=<rating>                             a rating, 1..5
    recommendation request <server>, status <code>, result: <ids>, <n> ms
    recommendation request <server>, status <code>, result: <error text>, <n> ms

A telemetry line whose result is not a list of movie ids is the course infrastructure's record
of a failed call (``status 0, result: java.net.SocketTimeoutException: Read timed out, 800 ms``):
it is valid, parses as a ``reco`` event with its status, ``reco_results`` None and the text in
``reco_error``, because availability monitoring counts exactly those lines. Movie ids are slugs
of letters (any script: ``léon+the+professional+1994``), digits and ``+%.:'()!&-``.

A failed call is a valid telemetry line too (the input of availability monitoring): a status
other than 200 — ``0`` when there was no HTTP answer at all — with the error text as its result,
e.g. ``status 0, result: java.net.SocketTimeoutException: Read timed out, 800 ms``; it parses with
no result ids.

Every line parses to a :class:`ParsedEvent`; a bad one carries a ``reject_reason`` instead of
raising, so callers can quarantine it with the reason and never lose it.

>>> parse_line("2026-11-22T08:54:03,42,GET /rate/the+matrix+1999=5").rating
5
>>> parse_line("2026-11-22T08:54:03,42,GET /rate/the+matrix+1999=7").reject_reason
'bad_rating'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    WATCH = "watch"
    RATE = "rate"
    RECO = "reco"


class RejectReason(StrEnum):
    """Why a line went to quarantine (stored as the string value)."""

    INVALID_UTF8 = "invalid_utf8"
    EMPTY = "empty"
    TOO_LONG = "too_long"
    FIELD_COUNT = "field_count"
    BAD_TIME = "bad_time"
    BAD_USER = "bad_user"
    UNKNOWN_VERB = "unknown_verb"
    BAD_MOVIE = "bad_movie"
    BAD_MINUTE = "bad_minute"
    BAD_RATING = "bad_rating"
    BAD_RECO = "bad_reco"
    DUPLICATE = "duplicate"


MAX_LINE_CHARS = 8192
MAX_USER_ID = 2_147_483_647  # ALS needs int32 ids
MAX_MINUTE = 10_000
MIN_RATING, MAX_RATING = 1, 5

_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?")
_USER_RE = re.compile(r"\d{1,10}")
# A letter or digit of any script ([^\W_]), then those or slug punctuation; no "," or space.
# \w also admits "_", which is refused after the match (a class is 4x faster than alternation).
_MOVIE = r"[^\W_][\w+%.:'()!&-]{0,199}"
_WATCH_RE = re.compile(rf"GET /data/m/({_MOVIE})/(-?\d{{1,9}})\.mpg")
_RATE_RE = re.compile(rf"GET /rate/({_MOVIE})=(-?\d{{1,9}})")
_RECO_RE = re.compile(
    r"recommendation request ([^,\s]+), status (\d{1,3}), result: (.*), (\d+(?:\.\d+)?) ?ms"
)
_MOVIE_RE = re.compile(_MOVIE)


def is_movie_id(text: str) -> bool:
    """Whether ``text`` is a valid movie-id slug."""
    return _MOVIE_RE.fullmatch(text) is not None and "_" not in text


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    """One log line, parsed; exactly one of ``event_type`` / ``reject_reason`` is set."""

    raw: str
    event_type: EventType | None = None
    event_time: datetime | None = None
    user_id: int | None = None
    movie_id: str | None = None
    minute: int | None = None
    rating: int | None = None
    reco_server: str | None = None
    reco_status: int | None = None
    reco_results: tuple[str, ...] | None = None
    reco_response_ms: float | None = None
    reco_error: str | None = None  # the result text of a failed call (reco_results is None)
    reject_reason: RejectReason | None = None

    @property
    def ok(self) -> bool:
        return self.reject_reason is None


def decode_line(data: bytes) -> tuple[str, bool]:
    """Decode raw bytes; returns the text (bad bytes replaced) and whether it was valid UTF-8."""
    try:
        return data.decode("utf-8"), True
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), False


def _parse_time(text: str) -> datetime | None:
    if not _TIME_RE.fullmatch(text):
        return None
    if "." in text:  # fromisoformat takes at most 6 fractional digits
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6].ljust(6, '0')}"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def parse_line(line: str | bytes) -> ParsedEvent:
    """Parse one MLiP log line (without its trailing newline)."""
    if isinstance(line, bytes):
        text, valid = decode_line(line)
        if not valid:
            return ParsedEvent(raw=text, reject_reason=RejectReason.INVALID_UTF8)
        line = text
    line = line.rstrip("\r\n")
    if not line.strip():
        return ParsedEvent(raw=line, reject_reason=RejectReason.EMPTY)
    if len(line) > MAX_LINE_CHARS:
        return ParsedEvent(raw=line, reject_reason=RejectReason.TOO_LONG)
    if "\ufffd" in line or "\x00" in line:
        return ParsedEvent(raw=line, reject_reason=RejectReason.INVALID_UTF8)
    parts = line.split(",", 2)
    if len(parts) != 3:
        return ParsedEvent(raw=line, reject_reason=RejectReason.FIELD_COUNT)
    time_text, user_text, request = parts
    event_time = _parse_time(time_text)
    if event_time is None:
        return ParsedEvent(raw=line, reject_reason=RejectReason.BAD_TIME)
    if not _USER_RE.fullmatch(user_text) or not 0 < int(user_text) <= MAX_USER_ID:
        return ParsedEvent(raw=line, reject_reason=RejectReason.BAD_USER)
    user_id = int(user_text)
    base: dict[str, Any] = {"raw": line, "event_time": event_time, "user_id": user_id}

    if request.startswith("GET /data/m/"):
        match = _WATCH_RE.fullmatch(request)
        if match is None:
            return ParsedEvent(**base, reject_reason=_bad_get(request, "/data/m/"))
        if "_" in match.group(1):
            return ParsedEvent(**base, reject_reason=RejectReason.BAD_MOVIE)
        minute = int(match.group(2))
        if not 0 <= minute <= MAX_MINUTE:
            return ParsedEvent(**base, reject_reason=RejectReason.BAD_MINUTE)
        return ParsedEvent(
            **base, event_type=EventType.WATCH, movie_id=match.group(1), minute=minute
        )
    if request.startswith("GET /rate/"):
        match = _RATE_RE.fullmatch(request)
        if match is None:
            return ParsedEvent(**base, reject_reason=_bad_get(request, "/rate/"))
        if "_" in match.group(1):
            return ParsedEvent(**base, reject_reason=RejectReason.BAD_MOVIE)
        rating = int(match.group(2))
        if not MIN_RATING <= rating <= MAX_RATING:
            return ParsedEvent(**base, reject_reason=RejectReason.BAD_RATING)
        return ParsedEvent(
            **base, event_type=EventType.RATE, movie_id=match.group(1), rating=rating
        )
    if request.startswith("recommendation request "):
        match = _RECO_RE.fullmatch(request)
        if match is None:
            return ParsedEvent(**base, reject_reason=RejectReason.BAD_RECO)
        status = int(match.group(2))
        result = match.group(3)
        results: tuple[str, ...] | None = tuple(r.strip() for r in result.split(",") if r.strip())
        error = None
        if status != 200:
            results, error = None, result.strip()  # a failed call: the result is its error text
        elif not all(is_movie_id(r) for r in results or ()):
            return ParsedEvent(**base, reject_reason=RejectReason.BAD_RECO)
        return ParsedEvent(
            **base,
            event_type=EventType.RECO,
            reco_server=match.group(1),
            reco_status=status,
            reco_results=results,
            reco_response_ms=float(match.group(4)),
            reco_error=error,
        )
    return ParsedEvent(**base, reject_reason=RejectReason.UNKNOWN_VERB)


def _bad_get(request: str, prefix: str) -> RejectReason:
    """Name the part of a known GET request that is wrong."""
    rest = request.split(prefix, 1)[1]
    movie = re.split(r"[/=]", rest, maxsplit=1)[0]
    if not is_movie_id(movie):
        return RejectReason.BAD_MOVIE
    return RejectReason.BAD_MINUTE if prefix == "/data/m/" else RejectReason.BAD_RATING


def format_watch(time: datetime, user_id: int, movie_id: str, minute: int) -> str:
    """Render a watched-minute line exactly as the MLiP servers log it."""
    return f"{format_time(time)},{user_id},GET /data/m/{movie_id}/{minute}.mpg"


def format_rate(time: datetime, user_id: int, movie_id: str, rating: int) -> str:
    """Render a rating line."""
    return f"{format_time(time)},{user_id},GET /rate/{movie_id}={rating}"


def format_reco(
    time: datetime,
    user_id: int,
    server: str,
    status: int,
    results: list[str] | tuple[str, ...],
    response_ms: int,
) -> str:
    """Render the telemetry line of one answered recommendation request."""
    return (
        f"{format_time(time)},{user_id},recommendation request {server}, status {status}, "
        f"result: {', '.join(results)}, {response_ms} ms"
    )


def as_utc(stamp: datetime) -> datetime:
    """An aware UTC time; a naive one is taken to be UTC already (as log times are)."""
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


def format_time(time: datetime) -> str:
    """ISO-8601 without zone, seconds precision (the MLiP format); naive UTC datetimes."""
    return time.replace(tzinfo=None).isoformat(timespec="seconds")
