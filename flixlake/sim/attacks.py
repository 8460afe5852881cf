"""Labelled attacks on the recommender, injected into a generated history or a live simulation.

Kinds (``--attack KIND[:key=value,...]``, see :func:`parse_attack`):

* ``push`` — new accounts each watch one *target* movie to the end and rate it 5;
* ``nuke`` — new accounts each watch a few minutes of a (popular) target and rate it 1;
* ``bandwagon`` — like push, plus ``filler`` of the most popular movies, each watched a few
  minutes and rated 5 (the profile looks like a fan of the hits);
* ``average`` — like push, plus ``filler`` random movies rated at each movie's mean rating
  (the profile agrees with everyone, except on the target);
* ``flood`` — a few accounts ask for recommendations ``requests`` times each over the campaign
  (with ``serve_url`` they call the service; otherwise their telemetry lines are written).

Every campaign uses fresh accounts (ids above the world's users: they look like the latest
sign-ups) that start at random times within ``hours`` of the campaign start; each account runs its
script the way a user's visit is logged (one watched-minute line a minute, a rating a little after
the last minute, the next movie a few minutes later). Which accounts attacked what, and when, is
returned as :class:`~flixlake.contract.attack_labels.AttackLabels` for a side file: the log lines
carry nothing that marks them.

Planning is deterministic per seed and independent of the good lines' random streams, so a
history with attacks has exactly the good lines of the same history without them.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import NDArray

from flixlake.contract.attack_labels import ATTACK_KINDS, AttackLabel, AttackLabels
from flixlake.sim.world import World

# Event codes shared with flixlake.sim.generate (a test checks they agree).
RECO, WATCH, RATE = 0, 1, 2

RATING_KINDS = ("push", "nuke", "bandwagon", "average")
POPULAR_POOL = 30  # bandwagon filler comes from this many most popular movies
MEAN_RATING_SAMPLE = 300  # users whose would-be ratings estimate a movie's mean (average attack)
RECO_LIST = 20  # movies in a flood request's logged answer
SIM_ACCOUNT_OFFSET = 3_000_000  # live attackers: ids above n_users + this (clear of other faults)


class AttackSpecError(ValueError):
    """A malformed ``--attack`` spec; the message names the offending key."""


@dataclass(frozen=True)
class AttackSpec:
    """One campaign. Times: ``day``/``hour`` in a generated history, ``after`` in a live run."""

    kind: str
    accounts: int
    target: str | None = None  # movie id slug; default: an obscure movie (nuke: a popular one)
    filler: int = 0  # bandwagon / average: filler movies per account
    requests: int = 0  # flood: recommendation requests per account
    hours: float = 2.0  # accounts start spread over this many hours
    day: int = 1  # generate: days before the history's last day (0 = the last day)
    hour: float = 18.0  # generate: hour of that day the campaign starts (UTC)
    after: float = 1.0  # simulate: simulated minutes after the start


_DEFAULTS: dict[str, dict[str, int]] = {
    "push": {"accounts": 40},
    "nuke": {"accounts": 40},
    "bandwagon": {"accounts": 40, "filler": 12},
    "average": {"accounts": 40, "filler": 12},
    "flood": {"accounts": 3, "requests": 400},
}
_INT_KEYS = ("accounts", "filler", "requests", "day")
_FLOAT_KEYS = ("hours", "hour", "after")
SPEC_KEYS = tuple(f.name for f in fields(AttackSpec) if f.name != "kind")


def parse_attack(text: str) -> AttackSpec:
    """``"bandwagon:accounts=30,filler=10"`` -> an :class:`AttackSpec` (defaults per kind).

    Raises :class:`AttackSpecError` naming the bad kind or key.
    """
    kind, _, rest = text.strip().partition(":")
    kind = kind.strip()
    if kind not in ATTACK_KINDS:
        raise AttackSpecError(f"--attack: unknown kind {kind!r}; known: {', '.join(ATTACK_KINDS)}")
    values: dict[str, object] = dict(_DEFAULTS[kind])
    given: set[str] = set()
    for item in (p.strip() for p in rest.split(",")):
        if not item:
            continue
        key, sep, value = (s.strip() for s in item.partition("="))
        if key not in SPEC_KEYS:
            raise AttackSpecError(
                f"--attack {kind}: unknown key {key!r}; known keys: {', '.join(SPEC_KEYS)}"
            )
        if not sep or not value:
            raise AttackSpecError(f"--attack {kind}: key {key!r} needs a value, like {key}=...")
        if key in given:
            raise AttackSpecError(f"--attack {kind}: key {key!r} given twice")
        given.add(key)
        values[key] = _parse_value(kind, key, value)
    spec = AttackSpec(kind=kind, **values)  # type: ignore[arg-type]
    _check(spec, given)
    return spec


def _parse_value(kind: str, key: str, value: str) -> object:
    if key == "target":
        return value
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if key in _INT_KEYS:
        if not (number.is_integer() and number >= 0):
            raise AttackSpecError(f"--attack {kind}: key {key!r}: {value!r} is not a whole number")
        return int(number)
    if not (math.isfinite(number) and number >= 0):
        raise AttackSpecError(f"--attack {kind}: key {key!r}: {value!r} is not a number >= 0")
    return number


def _check(spec: AttackSpec, given: set[str]) -> None:
    kind = spec.kind
    if spec.accounts < 1:
        raise AttackSpecError(f"--attack {kind}: key 'accounts' must be at least 1")
    if "filler" in given and kind not in ("bandwagon", "average"):
        raise AttackSpecError(f"--attack {kind}: key 'filler' applies to bandwagon and average")
    if "requests" in given and kind != "flood":
        raise AttackSpecError(f"--attack {kind}: key 'requests' applies to flood")
    if kind == "flood" and spec.requests < 1:
        raise AttackSpecError("--attack flood: key 'requests' must be at least 1")
    if kind == "flood" and "target" in given:
        raise AttackSpecError(
            "--attack flood: key 'target' does not apply (it targets the service)"
        )
    if spec.hours <= 0:
        raise AttackSpecError(f"--attack {kind}: key 'hours' must be positive")
    if spec.hour >= 24:
        raise AttackSpecError(f"--attack {kind}: key 'hour' must be below 24")


# -- planning -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Action:
    """One step of an account's script: watch ``minutes`` of ``movie``, then maybe rate it."""

    movie: int
    minutes: int
    rating: int | None


@dataclass(frozen=True)
class PlannedAttack:
    """A campaign with its accounts, their start offsets (seconds from the campaign's reference
    time) and scripts; floods have ``requests`` per account and no script."""

    attack_id: str
    spec: AttackSpec
    target: int  # movie index; -1 for a flood
    accounts: NDArray[np.int64]  # user ids
    starts: NDArray[np.float64]  # seconds after the reference time, one per account
    scripts: tuple[tuple[Action, ...], ...]

    @property
    def target_rating(self) -> int | None:
        return None if self.spec.kind == "flood" else (1 if self.spec.kind == "nuke" else 5)


def _mean_ratings(world: World, movies: NDArray[np.int64], seed: int) -> NDArray[np.float64]:
    """Each movie's mean rating over a sample of users (what an average attacker looks up)."""
    rng = np.random.default_rng([seed, 40])
    n = min(MEAN_RATING_SAMPLE, world.n_users)
    users = rng.choice(world.n_users, n, replace=False).astype(np.int64)
    means = np.empty(movies.size)
    for i, movie in enumerate(movies.tolist()):
        _, rating, _ = world.watch_outcome(users, np.full(n, movie, np.int64), rng)
        means[i] = rating.mean()
    return means


def _default_target(
    world: World, kind: str, available: NDArray[np.bool_], taken: set[int], rng: np.random.Generator
) -> int:
    """An obscure movie (popularity rank in the 50-90 % range) or, for nuke, a top-10 hit."""
    order = np.argsort(-world.movie_popularity, kind="stable")
    order = order[available[order]]
    n = order.size
    pool = (
        order[:10] if kind == "nuke" else order[int(0.5 * n) : max(int(0.9 * n), int(0.5 * n) + 1)]
    )
    pool = np.array([m for m in pool.tolist() if m not in taken] or pool.tolist(), np.int64)
    return int(pool[int(rng.integers(0, pool.size))])


def plan_attacks(
    world: World,
    specs: Sequence[AttackSpec],
    seed: int,
    first_account: int,
    available: NDArray[np.bool_] | None = None,
) -> list[PlannedAttack]:
    """Choose targets, accounts (ids from ``first_account`` on) and each account's script."""
    available = np.ones(world.n_movies, bool) if available is None else np.asarray(available)
    movie_index = {m: i for i, m in enumerate(world.movie_ids)}
    rng = np.random.default_rng([seed, 41])
    popular = np.argsort(-world.movie_popularity, kind="stable")
    popular = popular[available[popular]][:POPULAR_POOL]
    candidates = np.flatnonzero(available)
    planned: list[PlannedAttack] = []
    taken: set[int] = set()
    next_id = first_account
    counts: dict[str, int] = {}
    for spec in specs:
        counts[spec.kind] = counts.get(spec.kind, 0) + 1
        attack_id = f"{spec.kind}-{counts[spec.kind]}"
        accounts = np.arange(next_id, next_id + spec.accounts, dtype=np.int64)
        next_id += spec.accounts
        starts = np.sort(rng.uniform(0.0, spec.hours * 3600.0, spec.accounts))
        if spec.kind == "flood":
            planned.append(PlannedAttack(attack_id, spec, -1, accounts, starts, ()))
            continue
        if spec.target is not None:
            if spec.target not in movie_index:
                raise AttackSpecError(
                    f"--attack {spec.kind}: key 'target': no movie {spec.target!r} in this world"
                )
            target = movie_index[spec.target]
        else:
            target = _default_target(world, spec.kind, available, taken, rng)
        taken.add(target)
        runtime = int(world.movie_runtime[target])
        scripts = []
        for _ in range(spec.accounts):
            if spec.kind == "nuke":
                main = Action(target, int(rng.integers(1, 4)), 1)
            else:
                main = Action(target, runtime, 5)
            filler: list[Action] = []
            if spec.kind == "bandwagon":
                pool = popular[popular != target]
                chosen = rng.choice(pool, min(spec.filler, pool.size), replace=False)
                filler = [Action(int(m), int(rng.integers(2, 9)), 5) for m in chosen]
            elif spec.kind == "average":
                pool = candidates[candidates != target]
                chosen = rng.choice(pool, min(spec.filler, pool.size), replace=False)
                means = _mean_ratings(world, chosen.astype(np.int64), seed)
                noisy = np.clip(np.rint(means + rng.normal(0.0, 0.4, means.size)), 1, 5)
                filler = [
                    Action(int(m), int(rng.integers(2, 9)), int(r))
                    for m, r in zip(chosen.tolist(), noisy.tolist(), strict=True)
                ]
            steps = [*filler, main]
            order = rng.permutation(len(steps))
            scripts.append(tuple(steps[i] for i in order))
        planned.append(PlannedAttack(attack_id, spec, target, accounts, starts, tuple(scripts)))
    return planned


# -- events ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttackEvents:
    """Attack events in time order; ``second`` counts from the reference time.

    ``value`` is the minute (WATCH), the rating (RATE) or the row of ``reco_movies`` (RECO).
    """

    second: NDArray[np.int64]
    user: NDArray[np.int64]  # user index (user id - 1), as in generate's DayEvents
    kind: NDArray[np.int8]
    movie: NDArray[np.int32]
    value: NDArray[np.int32]
    reco_movies: NDArray[np.int32]  # reco rows x list width
    reco_ms: NDArray[np.int32]

    def __len__(self) -> int:
        return int(self.second.size)

    def between(self, lo: int, hi: int) -> AttackEvents:
        """The events with ``lo <= second < hi``, seconds from ``lo``, reco rows renumbered."""
        keep = np.flatnonzero((self.second >= lo) & (self.second < hi))
        kind = self.kind[keep]
        value = self.value[keep].copy()
        reco = kind == RECO
        rows = value[reco]
        value[reco] = np.arange(rows.size, dtype=np.int32)
        return AttackEvents(
            second=self.second[keep] - lo,
            user=self.user[keep],
            kind=kind,
            movie=self.movie[keep],
            value=value,
            reco_movies=self.reco_movies[rows],
            reco_ms=self.reco_ms[rows],
        )


def attack_events(
    world: World,
    planned: Sequence[PlannedAttack],
    offsets: Sequence[float],
    seed: int,
    list_width: int = RECO_LIST,
    time_scale: float = 1.0,
) -> AttackEvents:
    """Every planned account's lines, each campaign shifted by its ``offsets`` entry (seconds).

    ``time_scale`` (< 1 in a compressed live run) scales the gaps between one account's lines;
    campaign starts are scaled by the caller. Flood requests are spread over the campaign.
    """
    rng = np.random.default_rng([seed, 42])
    width = min(list_width, world.n_movies)
    popular = np.argsort(-world.movie_popularity, kind="stable")[:width].astype(np.int32)
    second: list[NDArray[np.int64]] = []
    user: list[NDArray[np.int64]] = []
    kind: list[NDArray[np.int8]] = []
    movie: list[NDArray[np.int32]] = []
    value: list[NDArray[np.int32]] = []
    n_reco = 0
    reco_ms: list[NDArray[np.int32]] = []
    for attack, offset in zip(planned, offsets, strict=True):
        for i, account in enumerate(attack.accounts.tolist()):
            t0 = offset + attack.starts[i] * time_scale
            if attack.spec.kind == "flood":
                span = attack.spec.hours * 3600.0 * time_scale
                times = np.sort(t0 + rng.uniform(0.0, span, attack.spec.requests))
                n = times.size
                second.append(np.floor(times).astype(np.int64))
                user.append(np.full(n, account - 1, np.int64))
                kind.append(np.full(n, RECO, np.int8))
                movie.append(np.full(n, -1, np.int32))
                value.append(np.arange(n_reco, n_reco + n, dtype=np.int32))
                reco_ms.append(rng.integers(3, 60, n).astype(np.int32))
                n_reco += n
                continue
            t = t0
            for action in attack.scripts[i]:
                if action.minutes:
                    minutes = np.arange(action.minutes)
                    second.append(np.floor(t + 60.0 * time_scale * minutes).astype(np.int64))
                    user.append(np.full(minutes.size, account - 1, np.int64))
                    kind.append(np.full(minutes.size, WATCH, np.int8))
                    movie.append(np.full(minutes.size, action.movie, np.int32))
                    value.append(minutes.astype(np.int32))
                    t += 60.0 * time_scale * (action.minutes - 1)
                if action.rating is not None:
                    t += float(rng.integers(20, 120)) * time_scale
                    second.append(np.array([math.floor(t)], np.int64))
                    user.append(np.array([account - 1], np.int64))
                    kind.append(np.array([RATE], np.int8))
                    movie.append(np.array([action.movie], np.int32))
                    value.append(np.array([action.rating], np.int32))
                t += float(rng.integers(30, 300)) * time_scale
    if not second:
        empty = np.empty(0, np.int64)
        return AttackEvents(
            empty,
            empty,
            np.empty(0, np.int8),
            np.empty(0, np.int32),
            np.empty(0, np.int32),
            np.empty((0, width), np.int32),
            np.empty(0, np.int32),
        )
    sec = np.concatenate(second)
    usr = np.concatenate(user)
    order = np.lexsort((usr, sec))
    return AttackEvents(
        second=sec[order],
        user=usr[order],
        kind=np.concatenate(kind)[order],
        movie=np.concatenate(movie)[order],
        value=np.concatenate(value)[order],
        reco_movies=np.tile(popular, (n_reco, 1)),
        reco_ms=np.concatenate(reco_ms) if reco_ms else np.empty(0, np.int32),
    )


def labels_for(
    world: World,
    planned: Sequence[PlannedAttack],
    events: AttackEvents,
    reference: dt.datetime,
) -> AttackLabels:
    """The side-file labels: each campaign's accounts with events, target, first/last event time.

    Accounts whose events all fall outside ``events`` (after a history's end) are left out.
    """
    out = []
    for attack in planned:
        mine = np.isin(events.user, attack.accounts - 1)
        seconds = events.second[mine]
        present = np.unique(events.user[mine]) + 1
        if present.size == 0:
            continue
        lo, hi = float(seconds.min()), float(seconds.max())
        out.append(
            AttackLabel(
                attack_id=attack.attack_id,
                kind=attack.spec.kind,
                target_movie=world.movie_ids[attack.target] if attack.target >= 0 else None,
                target_rating=attack.target_rating,
                accounts=tuple(int(a) for a in present.tolist()),
                start=reference + dt.timedelta(seconds=lo),
                end=reference + dt.timedelta(seconds=hi),
                filler=attack.spec.filler,
                requests=attack.spec.requests,
            )
        )
    return AttackLabels(attacks=tuple(out))


def history_offsets(planned: Sequence[PlannedAttack], days: int) -> list[float]:
    """Seconds from the history's first midnight to each campaign's start (``day``, ``hour``)."""
    out = []
    for attack in planned:
        day = days - 1 - attack.spec.day
        if day < 0:
            raise AttackSpecError(
                f"--attack {attack.spec.kind}: key 'day': {attack.spec.day} days before the last "
                f"day is before a {days}-day history"
            )
        out.append(day * 86_400.0 + attack.spec.hour * 3600.0)
    return out


# -- live -----------------------------------------------------------------------------------------
class LiveAttacks:
    """Attack lines of a live simulation, released as their wall-clock time comes.

    Campaigns start ``after`` simulated minutes after ``start`` (an epoch time); with
    ``minute_seconds`` < 60 the whole script is compressed like the simulator's visits. Flood
    requests are handed to the caller as account ids (to ask the service), other events as
    rendered MLiP lines. Attacker ids lie above ``n_users + SIM_ACCOUNT_OFFSET``.
    """

    def __init__(
        self,
        world: World,
        specs: Sequence[AttackSpec],
        seed: int,
        start: float,
        minute_seconds: float = 60.0,
    ) -> None:
        self.world = world
        self.start = start
        self.planned = plan_attacks(world, specs, seed, world.n_users + SIM_ACCOUNT_OFFSET + 1)
        scale = minute_seconds / 60.0
        offsets = [a.spec.after * minute_seconds for a in self.planned]
        self.events = attack_events(world, self.planned, offsets, seed, time_scale=scale)
        self._next = 0

    def labels(self) -> AttackLabels:
        """The side-file labels, with times in UTC wall-clock time."""
        reference = dt.datetime.fromtimestamp(self.start, dt.UTC).replace(tzinfo=None)
        return labels_for(self.world, self.planned, self.events, reference)

    def next_due(self) -> float | None:
        """Epoch time of the next attack event (None when the campaigns are over)."""
        if self._next >= len(self.events):
            return None
        return self.start + float(self.events.second[self._next])

    def due(self, now: float, limit: int) -> list[tuple[float, int, int, int, int]]:
        """Up to ``limit`` events due by ``now``: ``(time, user id, kind, movie, value)``."""
        out: list[tuple[float, int, int, int, int]] = []
        events = self.events
        while self._next < len(events) and len(out) < limit:
            when = self.start + float(events.second[self._next])
            if when > now:
                break
            i = self._next
            out.append(
                (
                    when,
                    int(events.user[i]) + 1,
                    int(events.kind[i]),
                    int(events.movie[i]),
                    int(events.value[i]),
                )
            )
            self._next += 1
        return out
