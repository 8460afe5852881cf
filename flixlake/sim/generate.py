"""``flixlake generate``: a synthetic history in the exact MLiP log format, drawn from a World.

The output folder gets one ``events-YYYY-MM-DD.log`` per day (lines sorted by time), plus
``movies.jsonl`` and ``users.jsonl`` with the catalog and user attributes that
:mod:`flixlake.batch.ingest` merges into the ``movies`` and ``users`` tables. Lines are rendered by the
``format_*`` helpers of :mod:`flixlake.contract.logformat`, so the one format lives in one place.

A day, per user: a Poisson number of visits (heavy users visit often, users come back across
days, new users join over time); each visit may start with a recommendation request (telemetry
line with 20 served movies), then one watched-minute line per minute of the chosen movie,
one minute apart, and sometimes a rating. At ``bad_rate``, realistic bad lines follow good ones:
one of :data:`BAD_KINDS`, each rejected by the parser with a known reason. Good lines never
depend on ``bad_rate`` (bad lines use their own random stream), and every good line is unique.

Everything is deterministic per seed (same arguments, byte-identical files), vectorized with
numpy, and streamed to disk in blocks, so memory stays bounded by one day of events.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from flixlake.contract.logformat import RejectReason, format_rate, format_reco, format_watch
from flixlake.sim.world import (
    GENDERS,
    OCCUPATIONS,
    SAMPLE_SESSION_SHARE,
    MovieChooser,
    SeenPairs,
    TrendChooser,
    World,
)

Chooser = MovieChooser | TrendChooser

DEFAULT_END = dt.date(2026, 11, 22)  # last day of the history unless told otherwise
MOVIES_FILE = "movies.jsonl"
USERS_FILE = "users.jsonl"

RECO_SERVERS = ("flixlake-serve-1:8082", "flixlake-serve-2:8082")
RECO_SIZE = 20  # movies per served recommendation list
RECO_POOL = 40  # a list is drawn from the user's taste cluster's top movies
VISIT_RECO_PROB = 0.45  # share of visits that start with a recommendation request
NEW_USER_FRACTION = 0.25  # users who sign up during the history (highest ids, in id order)
NEW_MOVIE_FRACTION = 0.03  # movies added to the catalog during the history
MAX_VISITS_PER_DAY = 10
BLOCK_LINES = 100_000  # lines rendered and written at a time
DAY_SECONDS = 86_400
_HOUR_WEIGHTS = np.array(
    [3, 2, 1, 0.6, 0.4, 0.4, 0.8, 1.5, 2, 2.5, 3, 3.5, 4, 4, 4, 4.5, 5, 6, 8, 10, 11, 10, 7, 4.5]
)
_WEEKDAY_FACTOR = (0.95, 0.9, 0.9, 0.95, 1.1, 1.25, 1.2)  # Monday..Sunday

RECO, WATCH, RATE = 0, 1, 2
_VISIT_FIELDS = (
    *("user", "movie", "start", "has_reco", "watch_start"),
    *("minutes", "rating", "rated", "rate_time"),
)

# Each kind of bad line and the reason the parser gives it (flixlake.contract.logformat / bronze).
BAD_KINDS: dict[str, RejectReason] = {
    "truncated": RejectReason.BAD_RECO,  # a long telemetry line cut short
    "unknown_verb": RejectReason.UNKNOWN_VERB,  # POST/PUT/DELETE/lower-case get
    "bad_rating": RejectReason.BAD_RATING,  # rating 0, 6 or 7
    "negative_minute": RejectReason.BAD_MINUTE,
    "garbage_bytes": RejectReason.INVALID_UTF8,  # bytes that are not UTF-8
    "duplicate": RejectReason.DUPLICATE,  # the previous line again, right after it
    "field_count": RejectReason.FIELD_COUNT,  # a field missing or wrong separators
}
_BAD_KIND_NAMES = tuple(BAD_KINDS)
_INVALID_LEAD_BYTES = (0xC0, 0xC1, 0xF5, 0xF8, 0xFE, 0xFF)  # never valid anywhere in UTF-8


@dataclass(frozen=True)
class Calendar:
    """When each user joins and each movie becomes available, as day offsets."""

    first_date: dt.date
    days: int
    join_day: NDArray[np.int64]  # per user index; 0 = there from the start
    release_day: NDArray[np.int64]  # per movie index; 0 = in the catalog from the start

    def date(self, day: int) -> dt.date:
        return self.first_date + dt.timedelta(days=day)


def plan_calendar(world: World, first_date: dt.date, days: int, seed: int) -> Calendar:
    """Decide which users sign up and which movies arrive during the history, and when.

    One-off users (trends regime) come on a uniformly drawn day of the history, once.
    """
    rng = np.random.default_rng([seed, 1])
    join = np.zeros(world.n_users, dtype=np.int64)
    release = np.zeros(world.n_movies, dtype=np.int64)
    if days > 1:
        n_new = round(NEW_USER_FRACTION * world.n_users)
        if 0 < n_new < world.n_users:  # new users get the highest ids, like real sign-ups
            join[world.n_users - n_new :] = np.sort(rng.integers(1, days, n_new))
        n_new_movies = min(round(NEW_MOVIE_FRACTION * world.n_movies), world.n_movies - 1)
        if n_new_movies > 0:
            arriving = rng.choice(world.n_movies, n_new_movies, replace=False)
            release[arriving] = rng.integers(1, days, n_new_movies)
    one_off = np.flatnonzero(world.user_one_off)
    if one_off.size:
        join[one_off] = np.random.default_rng([seed, 9]).integers(0, days, one_off.size)
    return Calendar(first_date=first_date, days=days, join_day=join, release_day=release)


@dataclass(frozen=True)
class DayEvents:
    """One day's good events, sorted by (second, user): the rows of that day's log file."""

    second: NDArray[np.int32]  # seconds since midnight
    user: NDArray[np.int32]  # user index (user id - 1)
    kind: NDArray[np.int8]  # RECO | WATCH | RATE
    movie: NDArray[np.int32]  # movie index; -1 for RECO
    value: NDArray[np.int32]  # minute (WATCH), rating (RATE) or row of reco_movies (RECO)
    reco_movies: NDArray[np.int32]  # served lists, reco rows x <= RECO_SIZE movie indices
    reco_ms: NDArray[np.int32]
    reco_server: NDArray[np.int8]

    def __len__(self) -> int:
        return int(self.second.size)

    def count(self, kind: int) -> int:
        return int(np.count_nonzero(self.kind == kind))


def simulate_day(
    world: World,
    calendar: Calendar,
    day: int,
    chooser: Chooser,
    seen: SeenPairs,
    rng: np.random.Generator,
) -> DayEvents:
    """Draw one day of visits for every user; ``seen`` gains the day's watched pairs."""
    date = calendar.date(day)
    rate = world.user_activity * _WEEKDAY_FACTOR[date.weekday()]
    visits = rng.poisson(np.where(calendar.join_day <= day, rate, 0.0))
    if day > 0:  # a user who signs up today watches something today
        visits = np.where(calendar.join_day == day, np.maximum(visits, 1), visits)
    # one-off users (trends regime): one visit on the day they come, never again
    visits = np.where(world.user_one_off, (calendar.join_day == day).astype(np.int64), visits)
    visits = np.minimum(visits, MAX_VISITS_PER_DAY)
    alive = visits > 0  # still has visits left today (a visit past midnight ends the day)
    clock = np.zeros(world.n_users, dtype=np.int64)  # when the user's last visit ended
    hour_p = _HOUR_WEIGHTS / _HOUR_WEIGHTS.sum()
    parts: list[dict[str, NDArray[np.int64]]] = []
    for round_ in range(int(visits.max(initial=0))):
        users = np.flatnonzero(alive & (visits > round_))
        if users.size == 0:
            break
        n = users.size
        movies = chooser.sample(users, rng, seen)
        minutes, rating, rated = world.watch_outcome(users, movies, rng)
        has_reco = rng.random(n) < VISIT_RECO_PROB
        reco_delay = np.where(has_reco, rng.integers(3, 90, n), 0)
        rate_delay = np.where(rated, rng.integers(20, 300, n), 0)
        length = reco_delay + 60 * (minutes - 1) + rate_delay
        if round_ == 0:
            start = rng.choice(24, n, p=hour_p) * 3600 + rng.integers(0, 3600, n)
            start = np.minimum(start, DAY_SECONDS - 1 - length)
        else:
            start = clock[users] + 60 + rng.exponential(2400.0, n).astype(np.int64)
        fits = start + length < DAY_SECONDS
        alive[users[~fits]] = False
        clock[users] = start + length
        keep = np.flatnonzero(fits)
        seen.add(users[keep], movies[keep])
        parts.append(
            {
                "user": users[keep],
                "movie": movies[keep],
                "start": start[keep],
                "has_reco": has_reco[keep].astype(np.int64),
                "watch_start": (start + reco_delay)[keep],
                "minutes": minutes[keep],
                "rating": rating[keep],
                "rated": rated[keep].astype(np.int64),
                "rate_time": (start + length)[keep],
            }
        )
    visit = {
        key: np.concatenate([p[key] for p in parts]) if parts else np.empty(0, np.int64)
        for key in _VISIT_FIELDS
    }
    return _events_from_visits(world, chooser, visit, rng)


def _events_from_visits(
    world: World,
    chooser: Chooser,
    visit: dict[str, NDArray[np.int64]],
    rng: np.random.Generator,
) -> DayEvents:
    """Expand visits into reco, per-minute watch and rating events, sorted by time."""
    # recommendation requests, served from the user's taste cluster's favourites
    r = np.flatnonzero(visit["has_reco"])
    pool = chooser.top_movies(RECO_POOL)
    size = min(RECO_SIZE, pool.shape[1])
    pick = np.argsort(rng.random((r.size, pool.shape[1])), axis=1)[:, :size]
    reco_movies = pool[world.user_cluster[visit["user"][r]].astype(np.int64)[:, None], pick]
    reco_ms = np.clip(np.rint(rng.lognormal(np.log(120.0), 0.6, r.size)), 3, 3000)
    reco_server = rng.integers(0, len(RECO_SERVERS), r.size)
    # one line per watched minute, one minute apart
    minutes = visit["minutes"]
    per_visit = np.repeat(np.arange(minutes.size, dtype=np.int32), minutes)
    first_line = np.repeat((np.cumsum(minutes) - minutes).astype(np.int32), minutes)
    minute = np.arange(per_visit.size, dtype=np.int32) - first_line
    del first_line
    # ratings
    q = np.flatnonzero(visit["rated"])
    i32 = np.int32
    second = np.concatenate(
        [
            visit["start"][r].astype(i32),
            visit["watch_start"].astype(i32)[per_visit] + 60 * minute,
            visit["rate_time"][q].astype(i32),
        ]
    )
    user = np.concatenate(
        [visit["user"][r], visit["user"].astype(i32)[per_visit], visit["user"][q]]
    ).astype(i32)
    kind = np.concatenate(
        [
            np.full(r.size, RECO, np.int8),
            np.full(per_visit.size, WATCH, np.int8),
            np.full(q.size, RATE, np.int8),
        ]
    )
    movie = np.concatenate(
        [np.full(r.size, -1, i32), visit["movie"].astype(i32)[per_visit], visit["movie"][q]]
    ).astype(i32)
    value = np.concatenate([np.arange(r.size, dtype=i32), minute, visit["rating"][q]]).astype(i32)
    del per_visit, minute
    order = np.lexsort((user, second))  # a user's events are strictly increasing in time
    return DayEvents(
        second=second[order],
        user=user[order],
        kind=kind[order],
        movie=movie[order],
        value=value[order],
        reco_movies=reco_movies.astype(np.int32),
        reco_ms=reco_ms.astype(np.int32),
        reco_server=reco_server.astype(np.int8),
    )


@dataclass(frozen=True)
class Bursts:
    """Bandwagon bursts of the trends regime: movie ``movie[i]`` draws ``gain[i]`` times more
    from day ``start[i]`` for ``length[i]`` days."""

    movie: NDArray[np.int64]
    start: NDArray[np.int64]
    length: NDArray[np.int64]
    gain: NDArray[np.float64]


def plan_bursts(world: World, days: int, seed: int) -> Bursts:
    """About one burst per 300 movies and day, on movies drawn uniformly (often obscure ones)."""
    rng = np.random.default_rng([seed, 8])
    n = max(1, round(days * world.n_movies / 300))
    return Bursts(
        movie=rng.integers(0, world.n_movies, n),
        start=rng.integers(0, days, n),
        length=rng.integers(2, 6, n),
        gain=rng.lognormal(np.log(40.0), 0.7, n),
    )


def trend_weights(
    world: World, calendar: Calendar, bursts: Bursts, day: int
) -> NDArray[np.float64]:
    """The trends regime's draw of every movie on ``day``: Zipf x recency x bursts (0: not out)."""
    weight = world.movie_popularity.copy()  # 1 / popularity rank
    age = day - calendar.release_day
    arrived = calendar.release_day > 0
    weight *= np.where(arrived & (age >= 0), 1.0 + 15.0 * np.exp(-np.maximum(age, 0) / 5.0), 1.0)
    weight[age < 0] = 0.0
    active = (bursts.start <= day) & (day < bursts.start + bursts.length)
    np.multiply.at(weight, bursts.movie[active], bursts.gain[active])
    weight[age < 0] = 0.0
    return weight


def render_lines(
    events: DayEvents, lo: int, hi: int, date: dt.date, movie_ids: Sequence[str]
) -> list[str]:
    """Render events ``lo:hi`` of a day as MLiP log lines (without newlines)."""
    midnight = dt.datetime.combine(date, dt.time.min)
    seconds = events.second[lo:hi].tolist()
    times = {s: midnight + dt.timedelta(seconds=s) for s in set(seconds)}
    lines: list[str] = []
    for sec, user, kind, movie, value in zip(
        seconds,
        events.user[lo:hi].tolist(),
        events.kind[lo:hi].tolist(),
        events.movie[lo:hi].tolist(),
        events.value[lo:hi].tolist(),
        strict=True,
    ):
        if kind == WATCH:
            lines.append(format_watch(times[sec], user + 1, movie_ids[movie], value))
        elif kind == RATE:
            lines.append(format_rate(times[sec], user + 1, movie_ids[movie], value))
        else:
            lines.append(
                format_reco(
                    times[sec],
                    user + 1,
                    RECO_SERVERS[int(events.reco_server[value])],
                    200,
                    [movie_ids[m] for m in events.reco_movies[value].tolist()],
                    int(events.reco_ms[value]),
                )
            )
    return lines


def bad_line(
    kind: str,
    good_line: str,
    time: dt.datetime,
    user_id: int,
    movie_id: str,
    reco_ids: Sequence[str],
    rng: np.random.Generator,
) -> str:
    """A realistic bad line of ``kind`` near ``good_line``; BAD_KINDS names its parse reason.

    Invalid bytes come back as lone surrogates (``surrogateescape``): encode the line with
    ``errors="surrogateescape"`` to get the raw bytes.
    """
    if kind == "duplicate":
        return good_line
    if kind == "truncated":
        full = format_reco(time, user_id, RECO_SERVERS[0], 200, list(reco_ids), 120)
        head = full.index("recommendation request ") + len("recommendation request ") + 1
        return full[: int(rng.integers(head, len(full)))]
    if kind == "unknown_verb":
        base = (format_watch if rng.random() < 0.7 else format_rate)(time, user_id, movie_id, 3)
        verb = ("POST", "PUT", "DELETE", "HEAD", "get")[int(rng.integers(0, 5))]
        return base.replace(",GET /", f",{verb} /", 1)
    if kind == "bad_rating":
        return format_rate(time, user_id, movie_id, (0, 6, 7)[int(rng.integers(0, 3))])
    if kind == "negative_minute":
        return format_watch(time, user_id, movie_id, -int(rng.integers(1, 120)))
    if kind == "garbage_bytes":
        raw = good_line.encode("utf-8")
        pos = int(rng.integers(0, len(raw)))
        junk = bytes(
            [
                _INVALID_LEAD_BYTES[int(rng.integers(0, len(_INVALID_LEAD_BYTES)))],
                *rng.integers(0x80, 0x100, int(rng.integers(1, 8))).tolist(),
            ]
        )
        return (raw[:pos] + junk + raw[pos:]).decode("utf-8", errors="surrogateescape")
    if kind == "field_count":
        base = (format_watch if rng.random() < 0.7 else format_rate)(time, user_id, movie_id, 1)
        time_text, user_text, request = base.split(",", 2)
        variant = int(rng.integers(0, 3))
        if variant == 0:
            return f"{time_text},{request}"  # user id missing
        if variant == 1:
            return f"{user_text},{request}"  # time missing
        return base.replace(",", ";")
    raise ValueError(f"unknown bad-line kind {kind!r}; known: {', '.join(BAD_KINDS)}")


def _with_bad_lines(
    lines: list[str],
    events: DayEvents,
    lo: int,
    flagged: NDArray[np.int64],
    kinds: NDArray[np.int64],
    date: dt.date,
    movie_ids: Sequence[str],
    rng: np.random.Generator,
    counts: dict[str, int],
) -> list[str]:
    """Insert one bad line right after each flagged good line (positions relative to ``lo``)."""
    if flagged.size == 0:
        return lines
    midnight = dt.datetime.combine(date, dt.time.min)
    out: list[str] = []
    prev = 0
    for pos, kind_index in zip(flagged.tolist(), kinds.tolist(), strict=True):
        row = lo + pos
        movie = int(events.movie[row])
        if movie < 0:
            movie = int(rng.integers(0, len(movie_ids)))
        reco_ids = [movie_ids[m] for m in rng.integers(0, len(movie_ids), RECO_SIZE).tolist()]
        kind = _BAD_KIND_NAMES[kind_index]
        out.extend(lines[prev : pos + 1])
        out.append(
            bad_line(
                kind,
                lines[pos],
                midnight + dt.timedelta(seconds=int(events.second[row])),
                int(events.user[row]) + 1,
                movie_ids[movie],
                reco_ids,
                rng,
            )
        )
        counts[kind] += 1
        prev = pos + 1
    out.extend(lines[prev:])
    return out


def _day_blocks(
    events: DayEvents,
    date: dt.date,
    movie_ids: Sequence[str],
    bad_rate: float,
    bad_rng: np.random.Generator,
    bad_counts: dict[str, int],
) -> Iterator[list[str]]:
    """The day's lines in time order, BLOCK_LINES good lines (plus their bad ones) at a time."""
    n = len(events)
    insert_p = bad_rate / (1.0 - bad_rate)  # so bad lines are ~bad_rate of all lines
    flagged_all = np.flatnonzero(bad_rng.random(n) < insert_p) if insert_p > 0 else np.empty(0)
    kinds_all = bad_rng.integers(0, len(_BAD_KIND_NAMES), flagged_all.size)
    for lo in range(0, n, BLOCK_LINES):
        hi = min(lo + BLOCK_LINES, n)
        lines = render_lines(events, lo, hi, date, movie_ids)
        sel = (flagged_all >= lo) & (flagged_all < hi)
        yield _with_bad_lines(
            lines,
            events,
            lo,
            flagged_all[sel].astype(np.int64) - lo,
            kinds_all[sel],
            date,
            movie_ids,
            bad_rng,
            bad_counts,
        )


def _write_atomic(path: Path, chunks: Iterator[bytes]) -> None:
    """Write ``path`` from ``chunks`` via a temporary file, so no half-written file remains."""
    tmp = path.with_name(path.name + ".part")
    with tmp.open("wb") as fh:
        for chunk in chunks:
            fh.write(chunk)
    os.replace(tmp, path)


def write_metadata(out: Path, world: World, calendar: Calendar) -> None:
    """Write movies.jsonl and users.jsonl, keyed like the ``movies``/``users`` tables."""

    def movie_rows() -> Iterator[bytes]:
        for m in range(world.n_movies):
            row = {
                "movie_id": world.movie_ids[m],
                "title": world.movie_titles[m],
                "year": int(world.movie_years[m]),
                "genres": world.movie_genre_names(m),
                "first_seen": calendar.date(int(calendar.release_day[m])).isoformat(),
            }
            yield (json.dumps(row) + "\n").encode()

    def user_rows() -> Iterator[bytes]:
        ages = world.user_age.tolist()
        genders = world.user_gender.tolist()
        occupations = world.user_occupation.tolist()
        for lo in range(0, world.n_users, BLOCK_LINES):
            rows = (
                json.dumps(
                    {
                        "user_id": i + 1,
                        "age": ages[i],
                        "gender": GENDERS[genders[i]],
                        "occupation": OCCUPATIONS[occupations[i]],
                    }
                )
                for i in range(lo, min(lo + BLOCK_LINES, world.n_users))
            )
            yield ("\n".join(rows) + "\n").encode()

    _write_atomic(out / MOVIES_FILE, movie_rows())
    _write_atomic(out / USERS_FILE, user_rows())


def generate_history(
    out: Path,
    n_users: int,
    n_movies: int,
    days: int,
    seed: int,
    bad_rate: float = 0.0,
    start: dt.date | None = None,
    progress: Callable[[int], None] | None = None,
    *,
    end: dt.date | None = None,
    mean_activity: float = 0.3,
    regime: str = "lowrank",
    sample_share: float | None = None,
) -> dict[str, Any]:
    """Write ``days`` days of synthetic MLiP logs plus metadata to ``out``; returns a summary.

    The history ends on ``end`` (default 2026-11-22, so the demo's run date is predictable),
    or starts on ``start`` when that is given instead. ``progress`` gets the lines written.
    ``mean_activity`` is the average visits per user and day (lower it for 1M-user histories).
    ``regime`` picks the world's choice model (:mod:`flixlake.sim.world`): "lowrank" (ALS's own
    model class) or "trends" (popularity, recency, bursts, one-off users, 1-2 star raters);
    ``sample_share`` (trends) the share of sessions that are 1-4 minutes of sampling.
    """
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    if not 0.0 <= bad_rate < 1.0:
        raise ValueError(f"bad_rate must be in [0, 1), got {bad_rate}")
    if start is not None and end is not None:
        raise ValueError("give either start or end, not both")
    first_date = start if start is not None else (end or DEFAULT_END) - dt.timedelta(days - 1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    world = World.build(
        n_users,
        n_movies,
        seed,
        mean_activity=mean_activity,
        regime=regime,
        sample_share=SAMPLE_SESSION_SHARE if sample_share is None else sample_share,
    )
    calendar = plan_calendar(world, first_date, days, seed)
    bursts = plan_bursts(world, days, seed)
    write_metadata(out, world, calendar)

    seen = SeenPairs(world.n_movies)
    counts = {"watch": 0, "rate": 0, "reco": 0}
    bad_counts = dict.fromkeys(BAD_KINDS, 0)
    active = np.zeros(world.n_users, dtype=bool)
    written = 0
    chooser: Chooser | None = None
    for day in range(days):
        date = calendar.date(day)
        if world.regime == "trends":
            chooser = TrendChooser(world, trend_weights(world, calendar, bursts, day))
        elif chooser is None or np.any(calendar.release_day == day):
            chooser = world.chooser(available=calendar.release_day <= day)
        events = simulate_day(
            world, calendar, day, chooser, seen, np.random.default_rng([seed, 2, day])
        )
        counts["watch"] += events.count(WATCH)
        counts["rate"] += events.count(RATE)
        counts["reco"] += events.count(RECO)
        active[events.user] = True
        blocks = _day_blocks(
            events,
            date,
            world.movie_ids,
            bad_rate,
            np.random.default_rng([seed, 3, day]),
            bad_counts,
        )

        def encoded(blocks: Iterator[list[str]] = blocks) -> Iterator[bytes]:
            nonlocal written
            for lines in blocks:
                yield ("\n".join(lines) + "\n").encode("utf-8", errors="surrogateescape")
                written += len(lines)
                if progress is not None:
                    progress(written)

        _write_atomic(out / f"events-{date.isoformat()}.log", encoded())

    n_bad = sum(bad_counts.values())
    return {
        "out": str(out),
        "seed": seed,
        "files": days,
        "days": days,
        "first_date": first_date.isoformat(),
        "last_date": calendar.date(days - 1).isoformat(),
        "regime": world.regime,
        "users": world.n_users,
        "movies": world.n_movies,
        "one_off_users": int(world.user_one_off.sum()),
        "low_raters": int(world.user_low_rater.sum()),
        "active_users": int(active.sum()),
        "new_users": int(np.count_nonzero(calendar.join_day > 0)),
        "new_movies": int(np.count_nonzero(calendar.release_day > 0)),
        "lines": {**counts, "bad": bad_counts, "bad_total": n_bad, "total": written},
    }
