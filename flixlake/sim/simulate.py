"""``flixlake simulate``: live MLiP log lines into the Kafka topic, at a steady rate.

The same :class:`~flixlake.sim.world.World` as ``flixlake generate`` (same users, movies and tastes
for the same ``--users/--movies/--seed``), but in real time: a *visit* picks a user (weighted by
their activity; a user is in at most one visit at a time, so one user's lines are in time order),
a movie (the world's choice model, or a recommendation from ``serve_url``), and how much of it is
watched and whether it is rated (:meth:`World.watch_outcome`). The visit then emits, each at its
wall-clock time (UTC, ISO without zone): maybe a recommendation-request telemetry line, one
watched-minute line per minute (60 s apart), and maybe a rating. When the visits due now do not
fill the rate, new visits start, so the rate sets how many users watch at once (about
``60 * rate``; a world with fewer users than that cannot reach the rate, see ``user_limited``).

``minute_seconds`` (default 60: real time) compresses time: a watched minute lasts that many
wall-clock seconds, and so do the pauses around it. Visits then end sooner and new ones (with
their recommendation requests) start more often — at 40 lines/s and 60 s a minute, the visits
started in the first minute fill the rate for many minutes and hardly any user asks the service
meanwhile; at 10 s a minute about six times as many visits start.

Pacing is a token bucket; lines go out in batches through one KafkaProducer, keyed by user id.
When the world's users cannot fill the rate (every user is mid-visit and no line is due), the
loop sleeps until the next line is due instead of polling, so its CPU use follows the lines it
sends (``wakeups`` in the summary counts loop iterations).

With ``serve_url`` a visit that asks for recommendations calls ``GET {serve_url}/recommend/<id>``
(800 ms timeout; failures are counted, never fatal) and watches the best-liked recommended movie
with a probability growing with its affinity, so the system's recommendations feed back. Like
the course's infrastructure, the simulator then logs that request's ``recommendation request``
line itself: the status and the response time it measured, the list it got, or for a failed
call status 0 and the error (``java.net.ConnectException: Connection refused``, ``...Read timed
out``) — the lines availability monitoring reads. (The service logs to a topic of its own.)

Faults (:func:`parse_faults`, e.g. ``bad=0.01,out_of_order=0.01,burst=0.05,unknown=0.01,
poison=0.001``): ``bad`` adds one of generate's :data:`~flixlake.sim.generate.BAD_KINDS` after a good
line, ``out_of_order`` back-dates a good line by 2-30 minutes, ``burst`` makes a second run at 10x
the rate, ``unknown`` adds a line from a user or for a movie outside the world, ``poison`` adds a
new account rating the campaign's target movie 5. Each fault message carries a Kafka header
``fault=<kind>`` (consumers ignore headers; tests and evaluations can use them).

``attacks`` (:mod:`flixlake.sim.attacks`, ``--attack push:after=5``) run labelled campaigns
beside the users: their lines are plain MLiP lines without a header, a flood's requests go to
``serve_url`` (429 answers are counted), and the labels go to a side file.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from flixlake.contract.attack_labels import write_labels
from flixlake.contract.kafka import BrokerError
from flixlake.contract.logformat import format_rate, format_reco, format_time, format_watch
from flixlake.sim.attacks import RATE, RECO, WATCH, AttackSpec, LiveAttacks
from flixlake.sim.generate import (
    BAD_KINDS,
    RECO_POOL,
    RECO_SERVERS,
    RECO_SIZE,
    VISIT_RECO_PROB,
    bad_line,
)
from flixlake.sim.world import SeenPairs, World

FAULT_HEADER = "fault"
BURST_FACTOR = 10
RECO_TIMEOUT_S = 0.8
MAX_BATCH = 5_000  # lines generated and handed to the producer per loop iteration
BUCKET_SECONDS = 0.2  # token-bucket capacity, in seconds of rate
PROGRESS_EVERY_S = 1.0
WAKE_SLACK_S = 0.02  # a user-limited loop sleeps until the next line is due, plus this
UNKNOWN_USER_SPAN = 1_000_000  # unknown users: ids in (n_users, n_users + span]
POISON_ID_OFFSET = 2_000_000  # poisoning accounts: ids above n_users + offset
_BAD_KINDS = tuple(BAD_KINDS)


class FaultSpecError(ValueError):
    """A malformed ``--faults`` spec; the message names the offending key."""


@dataclass(frozen=True)
class FaultSpec:
    """Probabilities of each fault (per good line; ``burst``: per second)."""

    bad: float = 0.0
    out_of_order: float = 0.0
    burst: float = 0.0
    unknown: float = 0.0
    poison: float = 0.0


FAULT_KEYS = tuple(f.name for f in fields(FaultSpec))


def parse_faults(spec: str) -> FaultSpec:
    """Parse ``"bad=0.01,burst=0.05"``; raise :class:`FaultSpecError` naming a bad key."""
    values: dict[str, float] = {}
    for item in (p.strip() for p in spec.split(",")):
        if not item:
            continue
        key, sep, text = (s.strip() for s in item.partition("="))
        if key not in FAULT_KEYS:
            raise FaultSpecError(
                f"--faults: unknown key {key!r}; known keys: {', '.join(FAULT_KEYS)}"
            )
        if not sep:
            raise FaultSpecError(f"--faults: key {key!r} needs a value, like {key}=0.01")
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0.0 <= value <= 1.0:
            raise FaultSpecError(f"--faults: key {key!r}: {text!r} is not a probability in [0, 1]")
        if key in values:
            raise FaultSpecError(f"--faults: key {key!r} given twice")
        values[key] = value
    return FaultSpec(**values)


@dataclass
class _Visit:
    user: int  # user index
    movie: int
    minutes: int
    rating: int
    rated: bool
    reco: list[str] | None  # served list to log as telemetry (None: no line)
    step: int = 0  # -1 reco line, 0..minutes-1 watch lines, minutes: rating
    asked: ServedReco | None = None  # the service's answer (with serve_url), logged as it was


@dataclass(frozen=True)
class ServedReco:
    """What one call to the service gave, as the course's infrastructure logs it."""

    status: int  # HTTP status; 0 when there was no HTTP answer (refused, timed out, reset)
    ms: int  # measured response time
    result: list[str]  # the movie ids, or the error text as one item
    server: str  # host:port asked


@dataclass
class _Line:
    key: bytes
    value: bytes
    kind: str  # watch | rate | reco | fault kind
    fault: str | None = None


def _utc(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).replace(tzinfo=None)


def fetch_recommendations(
    serve_url: str, user_id: int, timeout: float = RECO_TIMEOUT_S
) -> list[str]:
    """``GET {serve_url}/recommend/<user_id>``: the comma-separated movie ids it answers."""
    url = f"{serve_url.rstrip('/')}/recommend/{user_id}"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = response.read().decode("utf-8", errors="replace")
    return [m.strip() for m in body.strip().split(",") if m.strip()]


def ask_service(serve_url: str, user_id: int, timeout: float = RECO_TIMEOUT_S) -> ServedReco:
    """One call as the course's infrastructure makes it; never raises (a failure is logged)."""
    server = urllib.parse.urlsplit(serve_url).netloc or serve_url
    started = time.perf_counter()
    status, result = 200, []
    try:
        result = fetch_recommendations(serve_url, user_id, timeout)
    except urllib.error.HTTPError as exc:
        status, result = exc.code, [f"HTTP {exc.code} {exc.reason}"]
    except Exception as exc:  # refused, timed out, reset: what the course logs as status 0
        status, result = 0, [_java_style(exc)]
    ms = round((time.perf_counter() - started) * 1000)
    return ServedReco(status, ms, result, server)


def _java_style(exc: BaseException) -> str:
    """The error text the course's (Java) infrastructure logs for a failed call."""
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, ConnectionRefusedError):
        return "java.net.ConnectException: Connection refused"
    if isinstance(reason, TimeoutError | socket.timeout):
        return "java.net.SocketTimeoutException: Read timed out"
    return f"java.io.IOException: {type(reason).__name__}".replace(",", ";")


class Simulator:
    """The state of a live simulation; :func:`simulate` drives it."""

    def __init__(
        self,
        world: World,
        seed: int,
        faults: FaultSpec,
        serve_url: str | None = None,
        clock: Callable[[], float] = time.time,
        minute_seconds: float = 60.0,
        attacks: Sequence[AttackSpec] = (),
    ) -> None:
        if minute_seconds <= 0:
            raise ValueError(f"minute_seconds must be positive, got {minute_seconds}")
        self.world = world
        self.faults = faults
        self.serve_url = serve_url
        self.minute_seconds = minute_seconds  # wall-clock seconds a watched minute lasts
        self.clock = clock
        self.rng = np.random.default_rng([seed, 10])
        self.fault_rng = np.random.default_rng([seed, 11])  # good lines never depend on faults
        self.chooser = world.chooser()
        self.seen = SeenPairs(world.n_movies)
        self.reco_pool = self.chooser.top_movies(RECO_POOL)
        self.movie_index = {m: i for i, m in enumerate(world.movie_ids)}
        weights = world.user_activity.astype(np.float64)
        self.user_cdf = np.cumsum(weights / weights.sum())
        self.user_cdf[-1] = 1.0
        self.active = np.zeros(world.n_users, dtype=bool)
        self.n_active = 0  # users in a visit (kept with ``active``: no O(users) count per call)
        self.queue: list[tuple[float, int, _Visit]] = []
        self.seq = itertools.count()
        self.pending: list[_Line] = []
        self.poison_target = world.movie_ids[int(np.argmin(world.movie_popularity))]
        self.poison_accounts = 0
        self.counts: dict[str, int] = {"watch": 0, "rate": 0, "reco": 0}
        self.fault_counts: dict[str, int] = dict.fromkeys(
            [*_BAD_KINDS, "out_of_order", "unknown_user", "unknown_movie", "poison", "burst"], 0
        )
        self.visits = 0
        self.reco_ok = 0
        self.reco_failed = 0
        self.reco_taken = 0
        self.user_limited = False
        self._pool = ThreadPoolExecutor(max_workers=8) if serve_url else None
        self.attacks = (
            LiveAttacks(world, attacks, seed, clock(), minute_seconds) if attacks else None
        )
        self.attack_counts: dict[str, int] = {"lines": 0, "asked": 0, "answered": 0}
        self.attack_counts.update({"limited": 0, "failed": 0})
        self._attack_lock = threading.Lock()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # ---- visits -------------------------------------------------------------------------

    def _pick_users(self, k: int) -> np.ndarray:
        idle_users = self.world.n_users - self.n_active
        if idle_users <= k:  # every idle user is needed (or none is left): no weighted draw
            return self.rng.permutation(np.flatnonzero(~self.active))[:k].astype(np.int64)
        chosen: list[int] = []
        taken: set[int] = set()
        for _ in range(4):
            draw = np.searchsorted(self.user_cdf, self.rng.random(2 * (k - len(chosen)) + 8))
            for u in np.minimum(draw, self.world.n_users - 1).tolist():
                if not self.active[u] and u not in taken:
                    taken.add(u)
                    chosen.append(u)
                    if len(chosen) == k:
                        return np.array(chosen, dtype=np.int64)
        if len(chosen) < k:  # most users are busy: take the idle ones directly
            idle = np.flatnonzero(~self.active)
            idle = idle[~np.isin(idle, chosen)]
            extra = self.rng.permutation(idle)[: k - len(chosen)]
            chosen.extend(extra.tolist())
        return np.array(chosen, dtype=np.int64)

    def _served(self, users: np.ndarray) -> list[ServedReco]:
        """Ask the service for each user's list (in parallel); failures are answers too."""
        assert self._pool is not None and self.serve_url is not None
        url = self.serve_url
        futures = [self._pool.submit(ask_service, url, int(u) + 1) for u in users]
        out: list[ServedReco] = []
        for fut in futures:
            asked = fut.result()  # ask_service never raises and times out by itself
            out.append(asked)
            if asked.status == 200:
                self.reco_ok += 1
            else:
                self.reco_failed += 1
        return out

    def start_visits(self, k: int, now: float) -> int:
        """Start up to ``k`` visits whose first line is due ``now``; returns how many."""
        world = self.world
        users = self._pick_users(k)
        if users.size < k:
            self.user_limited = True
        if users.size == 0:
            return 0
        n = users.size
        movies = self.chooser.sample(users, self.rng, self.seen)
        has_reco = self.rng.random(n) < VISIT_RECO_PROB
        recos: list[list[str] | None] = [None] * n
        asked: list[ServedReco | None] = [None] * n
        if self.serve_url is not None:
            asking = np.flatnonzero(has_reco)
            served = self._served(users[asking]) if asking.size else []
            for i, answer in zip(asking.tolist(), served, strict=True):
                asked[i], recos[i] = answer, answer.result
                ids = answer.result if answer.status == 200 else []
                known = [self.movie_index[m] for m in ids if m in self.movie_index]
                if not known:
                    continue
                cand = np.array(known, dtype=np.int64)
                aff = world.affinity(np.full(cand.size, users[i]), cand)
                best = int(np.argmax(aff))
                z = (float(aff[best]) - world.affinity_mean) / world.affinity_std
                if self.rng.random() < min(0.85, 1.0 / (1.0 + np.exp(-(1.5 * z - 1.5)))):
                    movies[i] = cand[best]
                    self.reco_taken += 1
        else:
            size = min(RECO_SIZE, self.reco_pool.shape[1])
            for i in np.flatnonzero(has_reco).tolist():
                row = self.reco_pool[int(world.user_cluster[users[i]])]
                pick = self.rng.permutation(row.size)[:size]
                recos[i] = [world.movie_ids[m] for m in row[pick].tolist()]
        minutes, rating, rated = world.watch_outcome(users, movies, self.rng)
        self.seen.add(users, movies)
        self.active[users] = True
        self.n_active += n
        for i in range(n):
            visit = _Visit(
                user=int(users[i]),
                movie=int(movies[i]),
                minutes=int(minutes[i]),
                rating=int(rating[i]),
                rated=bool(rated[i]),
                reco=recos[i],
                step=-1 if recos[i] is not None else 0,
                asked=asked[i],
            )
            heapq.heappush(self.queue, (now, next(self.seq), visit))
        self.visits += n
        return n

    def _step(self, due: float, visit: _Visit) -> tuple[str, str]:
        """Render the visit's next line at ``due``, reschedule or end it; (kind, line)."""
        world = self.world
        when = _utc(due)
        uid = visit.user + 1
        movie_id = world.movie_ids[visit.movie]
        nxt: float | None
        scale = self.minute_seconds / 60.0
        if visit.step < 0:
            assert visit.reco is not None
            if visit.asked is not None:  # the call this visit made, as it went
                a = visit.asked
                kind, line = "reco", format_reco(when, uid, a.server, a.status, a.result, a.ms)
            else:
                ms = int(np.clip(np.rint(self.rng.lognormal(np.log(120.0), 0.6)), 3, 3000))
                server = RECO_SERVERS[int(self.rng.integers(0, len(RECO_SERVERS)))]
                kind, line = "reco", format_reco(when, uid, server, 200, visit.reco, ms)
            nxt = due + max(1.0, float(self.rng.integers(3, 90)) * scale)
        elif visit.step < visit.minutes:
            kind, line = "watch", format_watch(when, uid, movie_id, visit.step)
            last = visit.step == visit.minutes - 1
            gap = float(self.rng.integers(20, 300)) * scale if last else self.minute_seconds
            nxt = due + max(1.0, gap)
            if last and not visit.rated:
                nxt = None
        else:
            kind, line = "rate", format_rate(when, uid, movie_id, visit.rating)
            nxt = None
        visit.step += 1
        if nxt is None:
            self.active[visit.user] = False
            self.n_active -= 1
        else:
            heapq.heappush(self.queue, (nxt, next(self.seq), visit))
        return kind, line

    # ---- lines --------------------------------------------------------------------------

    def _fault_lines(self, kind: str, line: str, due: float, visit_user: int, movie: int) -> None:
        """Maybe add fault lines after a good one (to ``pending``)."""
        f, rng, world = self.faults, self.fault_rng, self.world
        when = _utc(due)
        if f.bad and rng.random() < f.bad:
            bad = _BAD_KINDS[int(rng.integers(0, len(_BAD_KINDS)))]
            reco_ids = [world.movie_ids[m] for m in rng.integers(0, world.n_movies, RECO_SIZE)]
            text = bad_line(bad, line, when, visit_user + 1, world.movie_ids[movie], reco_ids, rng)
            self._add_fault(visit_user + 1, text, bad)
        if f.unknown and rng.random() < f.unknown:
            if rng.random() < 0.5:
                uid = world.n_users + int(rng.integers(1, UNKNOWN_USER_SPAN + 1))
                text = format_watch(when, uid, world.movie_ids[movie], 0)
                self._add_fault(uid, text, "unknown_user")
            else:
                fake = (
                    f"unknown+movie+{int(rng.integers(0, 10**6))}+{int(rng.integers(1930, 2027))}"
                )
                self._add_fault(
                    visit_user + 1, format_rate(when, visit_user + 1, fake, 4), "unknown_movie"
                )
        if f.poison and rng.random() < f.poison:
            self.poison_accounts += 1
            uid = world.n_users + POISON_ID_OFFSET + self.poison_accounts
            self._add_fault(uid, format_rate(when, uid, self.poison_target, 5), "poison")

    def _add_fault(self, uid: int, text: str, fault: str) -> None:
        value = text.encode("utf-8", errors="surrogateescape")
        self.fault_counts[fault] += 1
        self.pending.append(_Line(str(uid).encode(), value, fault, fault))

    def next_due(self) -> float | None:
        """Clock time the next visit line is due (None before the first visit).

        When :meth:`next_lines` returned fewer lines than asked, every user is in a visit and
        nothing more is due before this time: the caller sleeps until then.
        """
        due = [
            t
            for t in (self.queue[0][0] if self.queue else None, self._attack_due())
            if t is not None
        ]
        return min(due) if due else None

    def _attack_due(self) -> float | None:
        return self.attacks.next_due() if self.attacks is not None else None

    def _attack_lines(self, budget: int, now: float) -> list[_Line]:
        """Attack events due by ``now``: log lines, or flood requests sent to the service."""
        assert self.attacks is not None
        out: list[_Line] = []
        ids = self.world.movie_ids
        for when, uid, kind, movie, value in self.attacks.due(now, budget):
            stamp = _utc(when)
            if kind == WATCH:
                line = format_watch(stamp, uid, ids[movie], value)
            elif kind == RATE:
                line = format_rate(stamp, uid, ids[movie], value)
            elif self.serve_url is not None and self._pool is not None:
                self.attack_counts["asked"] += 1  # the service logs the request itself
                future = self._pool.submit(fetch_recommendations, self.serve_url, uid)
                future.add_done_callback(self._count_flood_answer)
                continue
            else:
                recos = [ids[m] for m in self.attacks.events.reco_movies[value].tolist()]
                server = RECO_SERVERS[0]
                line = format_reco(
                    stamp, uid, server, 200, recos, int(self.attacks.events.reco_ms[value])
                )
            assert kind in (WATCH, RATE, RECO)
            self.attack_counts["lines"] += 1
            out.append(_Line(str(uid).encode(), line.encode("utf-8"), "attack"))
        return out

    def _count_flood_answer(self, future: Any) -> None:
        try:
            future.result()
            outcome = "answered"
        except urllib.error.HTTPError as exc:
            outcome = "limited" if exc.code == 429 else "failed"
        except Exception:  # a refused or timed-out request is only counted
            outcome = "failed"
        with self._attack_lock:
            self.attack_counts[outcome] += 1

    def next_lines(self, budget: int, now: float) -> list[_Line]:
        """Up to ``budget`` lines due by ``now`` (pending fault lines first, then visits)."""
        out: list[_Line] = []
        f, rng = self.faults, self.fault_rng
        if self.attacks is not None:
            out.extend(self._attack_lines(budget, now))
        while len(out) < budget:
            if self.pending:
                take = min(budget - len(out), len(self.pending))
                out.extend(self.pending[:take])
                del self.pending[:take]
                continue
            if not self.queue or self.queue[0][0] > now:
                if self.start_visits(min(budget - len(out), MAX_BATCH), now) == 0:
                    break
                continue
            due, _, visit = heapq.heappop(self.queue)
            user, movie = visit.user, visit.movie
            kind, line = self._step(due, visit)
            self.counts[kind] += 1
            fault = None
            if f.out_of_order and rng.random() < f.out_of_order:
                stamp = format_time(_utc(due))
                earlier = format_time(_utc(due - 60.0 * int(rng.integers(2, 31))))
                line = earlier + line[len(stamp) :]
                fault = "out_of_order"
                self.fault_counts[fault] += 1
            out.append(_Line(str(user + 1).encode(), line.encode("utf-8"), kind, fault))
            self._fault_lines(kind, line, due, user, movie)
        return out


def _starved_pause(sim: Simulator) -> float:
    """Seconds to sleep when the users cannot fill the rate: until the next line is due.

    Lines carry their due time, so waking a little late (``WAKE_SLACK_S``) only lets a few lines
    go out together; the cap keeps progress reports and ``stop`` responsive.
    """
    due = sim.next_due()
    if due is None:
        return PROGRESS_EVERY_S
    return min(PROGRESS_EVERY_S, max(0.0, due - sim.clock()) + WAKE_SLACK_S)


def simulate(
    bootstrap: str,
    topic: str,
    rate: float,
    n_users: int,
    n_movies: int,
    seed: int,
    events: int | None = None,
    faults: FaultSpec | None = None,
    serve_url: str | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    minute_seconds: float = 60.0,
    attacks: Sequence[AttackSpec] = (),
    attack_labels: Path | None = None,
    stream_seed: int | None = None,
) -> dict[str, Any]:
    """Stream live log lines into ``topic`` at ``rate`` lines/s until ``stop``, Ctrl-C or
    ``events`` lines; returns a summary (sent, by kind, faults, elapsed, rate, reco requests).

    ``minute_seconds``: wall-clock seconds between a visit's minute lines (60 = real time).
    ``seed`` builds the world; ``stream_seed`` (default: ``seed``) drives the visits, so
    successive runs over the same world can differ (another day of the same users).
    ``attacks`` (:mod:`flixlake.sim.attacks`) run alongside the users; their labels are written
    to ``attack_labels`` before the first line is sent.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    if events is not None and events < 0:
        raise ValueError(f"events must be >= 0, got {events}")
    faults = faults or FaultSpec()
    stop = stop or threading.Event()
    world = World.build(n_users, n_movies, seed)
    run_seed = seed if stream_seed is None else stream_seed
    sim = Simulator(
        world, run_seed, faults, serve_url, minute_seconds=minute_seconds, attacks=attacks
    )
    if sim.attacks is not None and attack_labels is not None:
        write_labels(attack_labels, sim.attacks.labels())
    try:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=5,
            batch_size=256 * 1024,
            bootstrap_timeout_ms=30_000,
        )
    except KafkaError as exc:
        raise BrokerError(f"cannot produce to {bootstrap}: {exc}") from exc
    send_errors = 0
    first_error: list[str] = []

    def on_error(exc: BaseException) -> None:
        nonlocal send_errors
        send_errors += 1
        if not first_error:
            first_error.append(str(exc))

    burst_rng = np.random.default_rng([run_seed, 12])
    sent = 0
    start = last = last_report = time.monotonic()
    sent_at_report = 0
    tokens = 0.0
    second = -1
    factor = 1.0
    interrupted = False
    wakeups = 0
    try:
        while not stop.is_set() and (events is None or sent < events):
            wakeups += 1
            now = time.monotonic()
            sec = int(now - start)
            if sec != second:  # a burst lasts one whole second
                second = sec
                burst = faults.burst > 0 and burst_rng.random() < faults.burst
                factor = float(BURST_FACTOR) if burst else 1.0
                sim.fault_counts["burst"] += int(burst)
            current = rate * factor
            tokens = min(tokens + (now - last) * current, max(1.0, current * BUCKET_SECONDS))
            last = now
            budget = min(int(tokens), MAX_BATCH)
            if events is not None:
                budget = min(budget, events - sent)
            starved = False
            if budget > 0:
                lines = sim.next_lines(budget, sim.clock())
                starved = len(lines) < budget  # every user is mid-visit, nothing else is due
                for ln in lines:
                    headers = [(FAULT_HEADER, ln.fault.encode())] if ln.fault else None
                    producer.send(topic, value=ln.value, key=ln.key, headers=headers).add_errback(
                        on_error
                    )
                sent += len(lines)
                tokens -= len(lines)
            if progress is not None and now - last_report >= PROGRESS_EVERY_S:
                progress(
                    {
                        "sent": sent,
                        "rate": (sent - sent_at_report) / (now - last_report),
                        "visits": sim.visits,
                        "user_limited": sim.user_limited,
                    }
                )
                last_report, sent_at_report = now, sent
            if starved:
                stop.wait(_starved_pause(sim))
            elif tokens < 1.0:
                stop.wait(min(0.05, (1.0 - tokens) / current))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        sim.close()
        try:
            producer.flush(timeout=60)
        finally:
            producer.close(timeout=10)
    elapsed = time.monotonic() - start
    if send_errors:
        raise BrokerError(f"{send_errors} of {sent} lines not acknowledged: {first_error[0]}")
    return {
        "topic": topic,
        "sent": sent,
        "lines": dict(sim.counts),
        "faults": {k: v for k, v in sim.fault_counts.items() if v},
        "visits": sim.visits,
        "elapsed_s": round(elapsed, 3),
        "rate": round(sent / elapsed, 1) if elapsed > 0 else 0.0,
        "target_rate": rate,
        "user_limited": sim.user_limited,
        "reco_requests": {"ok": sim.reco_ok, "failed": sim.reco_failed, "taken": sim.reco_taken},
        "poison_target": sim.poison_target if sim.fault_counts["poison"] else None,
        "interrupted": interrupted,
        "wakeups": wakeups,
        "attacks": dict(sim.attack_counts) if sim.attacks is not None else None,
    }
