"""Synthetic history: exact MLiP format, deterministic, realistic bad lines, learnable signal."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from flixlake.batch.ingest import ingest_paths
from flixlake.contract.logformat import parse_line
from flixlake.lake.bronze import parse_batch
from flixlake.lake.store import Lake
from flixlake.lake.tables import MOVIES, USERS
from flixlake.sim.generate import bad_line, generate_history

SMALL = {"n_users": 300, "n_movies": 80, "days": 6, "seed": 5}

# the parser's reason for each kind of bad line, written out by hand
EXPECTED_REASON = {
    "truncated": "bad_reco",
    "unknown_verb": "unknown_verb",
    "bad_rating": "bad_rating",
    "negative_minute": "bad_minute",
    "garbage_bytes": "invalid_utf8",
    "duplicate": "duplicate",
    "field_count": "field_count",
}
WATCH_LINE = re.compile(r"(\S+),(\d+),GET /data/m/([^/]+)/(\d+)\.mpg")


def _log_files(out: Path) -> list[Path]:
    return sorted(out.glob("events-*.log"))


def _lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


@pytest.fixture(scope="module")
def dirty(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("dirty")
    return out, generate_history(out, **SMALL, bad_rate=0.05)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("clean")
    return out, generate_history(out, **SMALL)


def test_same_arguments_same_bytes_other_seed_other_bytes(
    dirty: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, summary = dirty
    again = generate_history(tmp_path / "again", **SMALL, bad_rate=0.05)
    assert again == {**summary, "out": str(tmp_path / "again")}
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "again").iterdir())
    for name in names:
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    other = generate_history(tmp_path / "other", **{**SMALL, "seed": 6})
    assert (tmp_path / "other" / names[0]).read_bytes() != (out / names[0]).read_bytes()
    assert other["lines"]["watch"] != summary["lines"]["watch"]


def test_one_sorted_file_per_day_ending_on_the_default_date(
    clean: tuple[Path, dict[str, Any]],
) -> None:
    out, summary = clean
    days = [f"2026-11-{d}" for d in range(17, 23)]
    assert [p.name for p in _log_files(out)] == [f"events-{d}.log" for d in days]
    assert summary["first_date"] == "2026-11-17"
    assert summary["last_date"] == "2026-11-22"
    assert summary["files"] == 6
    for path, day in zip(_log_files(out), days, strict=True):
        times = [line.split(b",", 1)[0].decode() for line in _lines(path)]
        assert times == sorted(times)
        assert {t[:10] for t in times} == {day}


def test_clean_history_parses_completely_and_matches_the_summary(
    clean: tuple[Path, dict[str, Any]],
) -> None:
    out, summary = clean
    kinds: Counter[str] = Counter()
    users: set[int] = set()
    movie_ids = {
        json.loads(row)["movie_id"] for row in (out / "movies.jsonl").read_text().splitlines()
    }
    for path in _log_files(out):
        lines = _lines(path)
        batch = parse_batch(lines, "t", range(len(lines)), "b", dt.datetime(2026, 11, 23))
        assert batch.n_rejected == 0  # also: no good line is an accidental duplicate
        for line in lines:
            event = parse_line(line)
            assert event.ok, line
            kinds[str(event.event_type)] += 1
            users.add(event.user_id or 0)
            if event.reco_results is not None:
                assert event.reco_status == 200
                assert len(event.reco_results) == 20
                assert set(event.reco_results) <= movie_ids
            else:
                assert event.movie_id in movie_ids
    assert kinds == {
        "watch": summary["lines"]["watch"],
        "rate": summary["lines"]["rate"],
        "reco": summary["lines"]["reco"],
    }
    assert min(kinds.values()) > 0
    assert summary["lines"]["total"] == sum(kinds.values())
    assert summary["lines"]["bad_total"] == 0
    assert min(users) >= 1 and max(users) <= 300
    assert summary["active_users"] == len(users)
    assert (summary["users"], summary["movies"]) == (300, 80)


def test_watch_minutes_are_consecutive_one_minute_apart(
    clean: tuple[Path, dict[str, Any]],
) -> None:
    out, _ = clean
    sessions: dict[tuple[str, str, str], list[tuple[dt.datetime, int]]] = {}
    for path in _log_files(out):
        for line in path.read_text().splitlines():
            match = WATCH_LINE.fullmatch(line)
            if match:
                time, user, movie, minute = match.groups()
                sessions.setdefault((path.name, user, movie), []).append(
                    (dt.datetime.fromisoformat(time), int(minute))
                )
    assert len(sessions) > 100
    for watched in sessions.values():
        assert [m for _, m in watched] == list(range(len(watched)))
        gaps = {(b[0] - a[0]).total_seconds() for a, b in itertools.pairwise(watched)}
        assert gaps <= {60.0}


def test_users_come_back_and_new_users_sign_up_over_time(
    clean: tuple[Path, dict[str, Any]],
) -> None:
    out, summary = clean
    days_by_user: dict[int, set[int]] = {}
    for day, path in enumerate(_log_files(out)):
        for line in _lines(path):
            days_by_user.setdefault(int(line.split(b",")[1]), set()).add(day)
    returning = [u for u, days in days_by_user.items() if len(days) >= 2]
    assert len(returning) > 30
    assert summary["new_users"] == 75  # 25% of 300 sign up during the history
    new_users = [u for u in days_by_user if u > 225]  # they get the highest ids
    assert len(new_users) == 75  # every new user shows up on the day they sign up
    assert all(min(days_by_user[u]) >= 1 for u in new_users)
    assert len({min(days_by_user[u]) for u in new_users}) >= 3  # spread over days


def test_every_bad_line_is_rejected_for_its_reason_and_good_lines_stay(
    dirty: tuple[Path, dict[str, Any]], clean: tuple[Path, dict[str, Any]]
) -> None:
    dirty_out, dirty_summary = dirty
    clean_out, clean_summary = clean
    bad = dirty_summary["lines"]["bad"]
    assert set(bad) == set(EXPECTED_REASON)
    assert min(bad.values()) > 0
    reasons: Counter[str] = Counter()
    for dirty_path, clean_path in zip(_log_files(dirty_out), _log_files(clean_out), strict=True):
        lines = _lines(dirty_path)
        batch = parse_batch(lines, "t", range(len(lines)), "b", dt.datetime(2026, 11, 23))
        reasons.update(batch.quarantine["reason"].to_pylist())
        ok = [row["raw"] for row in batch.bronze.to_pylist() if row["parse_status"] == "ok"]
        assert ok == clean_path.read_text().splitlines()  # bad lines only ever added
    assert reasons == {EXPECTED_REASON[kind]: n for kind, n in bad.items()}
    assert dirty_summary["lines"]["bad_total"] == sum(bad.values())
    for kind in ("watch", "rate", "reco"):
        assert dirty_summary["lines"][kind] == clean_summary["lines"][kind]
    total = dirty_summary["lines"]["total"]
    assert total == clean_summary["lines"]["total"] + sum(bad.values())
    assert 0.03 < sum(bad.values()) / total < 0.07  # ~bad_rate of all lines


@pytest.mark.parametrize("kind", sorted(EXPECTED_REASON))
def test_each_kind_of_bad_line_gets_its_reason(kind: str) -> None:
    time = dt.datetime(2026, 11, 22, 8, 54, 3)
    good = "2026-11-22T08:54:03,42,GET /data/m/the+matrix+1999/12.mpg"
    recos = [f"movie+{i}+2001" for i in range(20)]
    rng = np.random.default_rng(0)
    for _ in range(50):  # every variant of the kind
        line = bad_line(kind, good, time, 42, "the+matrix+1999", recos, rng)
        raw = line.encode("utf-8", errors="surrogateescape")
        assert b"\n" not in raw
        batch = parse_batch([good.encode(), raw], "t", [0, 1], "b", dt.datetime(2026, 11, 23))
        assert batch.quarantine["reason"].to_pylist() == [EXPECTED_REASON[kind]], line


def test_unknown_bad_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown bad-line kind"):
        bad_line("sideways", "x", dt.datetime(2026, 1, 1), 1, "m+2000", [], np.random.default_rng())


def test_metadata_rows_match_the_table_schemas(clean: tuple[Path, dict[str, Any]]) -> None:
    out, summary = clean
    movies = [json.loads(r) for r in (out / "movies.jsonl").read_text().splitlines()]
    users = [json.loads(r) for r in (out / "users.jsonl").read_text().splitlines()]
    assert len(movies) == 80 and len(users) == 300
    assert all(set(row) == set(MOVIES.schema.names) - {"movie_idx"} for row in movies)
    assert all(set(row) == set(USERS.schema.names) for row in users)
    assert [u["user_id"] for u in users] == list(range(1, 301))
    assert {u["gender"] for u in users} == {"M", "F"}
    first_seen = Counter(m["first_seen"] for m in movies)
    assert first_seen["2026-11-17"] == 78  # 3% of 80 movies arrive during the history
    assert summary["new_movies"] == 2
    typed = [
        {**m, "movie_idx": i, "first_seen": dt.date.fromisoformat(m["first_seen"])}
        for i, m in enumerate(movies)
    ]
    assert pa.Table.from_pylist(typed, schema=MOVIES.schema).num_rows == 80
    assert pa.Table.from_pylist(users, schema=USERS.schema).num_rows == 300


def test_ingest_takes_the_history_and_quarantines_exactly_the_bad_lines(
    dirty: tuple[Path, dict[str, Any]], lake: Lake
) -> None:
    out, summary = dirty
    ingested = ingest_paths(lake, [out], chunk_lines=500_000)
    assert ingested.files == 6
    assert ingested.lines == summary["lines"]["total"]
    assert ingested.rejected == summary["lines"]["bad_total"]
    assert dict(ingested.reasons) == {
        EXPECTED_REASON[kind]: n for kind, n in summary["lines"]["bad"].items()
    }
    assert ingested.movies_added == 80
    assert ingested.users_merged == 300


def test_dates_progress_and_argument_checks(tmp_path: Path) -> None:
    seen: list[int] = []
    summary = generate_history(
        tmp_path / "a", 20, 10, 2, 1, start=dt.date(2026, 1, 31), progress=seen.append
    )
    assert (summary["first_date"], summary["last_date"]) == ("2026-01-31", "2026-02-01")
    assert seen == sorted(seen) and seen[-1] == summary["lines"]["total"]
    summary = generate_history(tmp_path / "b", 20, 10, 1, 1, end=dt.date(2026, 3, 1))
    assert (summary["first_date"], summary["last_date"]) == ("2026-03-01", "2026-03-01")
    with pytest.raises(ValueError, match="either start or end"):
        generate_history(tmp_path / "c", 20, 10, 2, 1, start=dt.date.today(), end=dt.date.today())
    with pytest.raises(ValueError, match="bad_rate"):
        generate_history(tmp_path / "c", 20, 10, 2, 1, bad_rate=1.0)
    with pytest.raises(ValueError, match="days"):
        generate_history(tmp_path / "c", 20, 10, 0, 1)


def test_taste_signal_beats_popularity_on_a_later_window(tmp_path: Path) -> None:
    """A per-user genre-affinity predictor, fit on the first 8 days, beats global popularity
    at predicting which new movies users start on the last 4 days."""
    out = tmp_path / "signal"
    generate_history(out, n_users=300, n_movies=100, days=12, seed=5)
    movies = [json.loads(r) for r in (out / "movies.jsonl").read_text().splitlines()]
    index = {m["movie_id"]: i for i, m in enumerate(movies)}
    genres = sorted({g for m in movies for g in m["genres"]})
    movie_genres = np.zeros((len(movies), len(genres)))
    for i, m in enumerate(movies):
        movie_genres[i, [genres.index(g) for g in m["genres"]]] = 1.0
    train = np.zeros((301, len(movies)))
    later: dict[int, set[int]] = {}
    for day, path in enumerate(_log_files(out)):
        for line in path.read_text().splitlines():
            match = WATCH_LINE.fullmatch(line)
            if match and match.group(4) == "0":  # a session starts
                user, movie = int(match.group(2)), index[match.group(3)]
                if day < 8:
                    train[user, movie] = 1.0
                else:
                    later.setdefault(user, set()).add(movie)
    popularity = train.sum(axis=0)
    hits = {"genre": 0, "popularity": 0}
    evaluated = 0
    for user, movies_later in later.items():
        new = movies_later - set(np.flatnonzero(train[user]).tolist())
        if not train[user].any() or not new:
            continue
        evaluated += 1
        genre_score = movie_genres @ (train[user] @ movie_genres) + 1e-3 * popularity
        for name, score in (("genre", genre_score), ("popularity", popularity.copy())):
            score[train[user] > 0] = -np.inf
            hits[name] += len(set(np.argsort(-score)[:10].tolist()) & new)
    assert evaluated > 50
    assert hits["genre"] > 1.3 * hits["popularity"] > 0
