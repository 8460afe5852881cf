"""File ingest: exactly once per file chunk, every line accounted for, metadata merged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flixlake.batch.ingest import ingest_paths
from flixlake.lake.store import Lake

LINES = [
    "2026-11-22T08:54:03,42,GET /data/m/heat+1995/3.mpg",
    "2026-11-22T08:55:03,42,GET /data/m/heat+1995/4.mpg",
    "2026-11-22T09:00:00,7,GET /rate/heat+1995=9",
    "not a log line",
    "2026-11-22T09:00:01,7,GET /rate/up+2009=4",
]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reingesting_a_file_adds_nothing(tmp_path: Path, lake: Lake) -> None:
    log = _write(tmp_path / "a.log", LINES)
    first = ingest_paths(lake, [log], chunk_lines=2)
    assert (first.lines, first.parsed, first.rejected) == (5, 3, 2)
    assert first.reasons == {"bad_rating": 1, "field_count": 1}
    second = ingest_paths(lake, [log], chunk_lines=2)
    assert second.lines == 0 and second.skipped_chunks == 3
    bronze = lake.read("bronze_events")
    assert bronze.num_rows == 5
    assert sorted(bronze["source_offset"].to_pylist()) == [0, 1, 2, 3, 4]
    assert lake.read("quarantine_events").num_rows == 2


def test_a_crash_between_chunks_resumes_without_duplicates(tmp_path: Path, lake: Lake) -> None:
    log = _write(tmp_path / "a.log", LINES)
    # simulate a run that committed only chunk 0 (lines 0-1) before dying
    ingest_paths(lake, [_write(tmp_path / "b.log", LINES[:2])], chunk_lines=2)
    import datetime as dt

    from flixlake.batch.ingest import file_sha256
    from flixlake.lake.bronze import parse_batch

    app_id = f"ingest:{file_sha256(log)}"
    batch = parse_batch(LINES[:2], str(log.resolve()), [0, 1], "x", dt.datetime(2026, 11, 23))
    lake.append("quarantine_events", batch.quarantine, app_id=app_id, txn_version=0)
    lake.append("bronze_events", batch.bronze, app_id=app_id, txn_version=0)
    summary = ingest_paths(lake, [log], chunk_lines=2)
    assert summary.skipped_chunks == 1 and summary.lines == 3
    rows = [r for r in lake.read("bronze_events").to_pylist() if r["source"] == str(log.resolve())]
    assert sorted(r["source_offset"] for r in rows) == [0, 1, 2, 3, 4]


def test_metadata_files_fill_movies_and_users(tmp_path: Path, lake: Lake) -> None:
    (tmp_path / "movies.jsonl").write_text(
        json.dumps(
            {
                "movie_id": "up+2009",
                "title": "Up",
                "year": 2009,
                "genres": ["animation"],
                "first_seen": "2009-05-29",
            }
        )
        + "\n"
    )
    (tmp_path / "users.jsonl").write_text(
        json.dumps({"user_id": 7, "age": 31, "gender": "F", "occupation": "writer"}) + "\n"
    )
    _write(tmp_path / "events-2026-11-22.log", LINES)
    summary = ingest_paths(lake, [tmp_path])
    assert summary.movies_added == 1 and summary.users_merged == 1 and summary.lines == 5
    movies = lake.read("movies").to_pylist()
    assert [(m["movie_idx"], m["movie_id"], m["year"]) for m in movies] == [(0, "up+2009", 2009)]
    assert lake.read("users").to_pylist()[0]["occupation"] == "writer"
    # the same metadata again writes nothing, so downstream pinned versions stay valid
    versions = (lake.version("movies"), lake.version("users"))
    again = ingest_paths(lake, [tmp_path])
    assert (again.movies_added, again.users_merged) == (0, 0)
    assert (lake.version("movies"), lake.version("users")) == versions


def test_missing_path_is_a_clear_error(tmp_path: Path, lake: Lake) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.log"):
        ingest_paths(lake, [tmp_path / "nope.log"])
