"""File ingest: each line of a file exactly once, by byte range; changed files refused."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from flixlake.batch.ingest import ChangedLogFileError, file_key, ingest_paths
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


def _append(path: Path, text: str) -> None:
    with path.open("a") as fh:
        fh.write(text)


def _watch_lines(first: int, n: int) -> list[str]:
    """``n`` distinct watch lines (user ``first + i``), a bad rating every 10th."""
    return [
        f"2026-11-22T10:00:00,{u},GET /rate/heat+1995=9"
        if u % 10 == 0
        else f"2026-11-22T10:00:00,{u},GET /data/m/heat+1995/{u % 90}.mpg"
        for u in range(first, first + n)
    ]


def _rows(lake: Lake, table: str, log: Path) -> list[dict[str, Any]]:
    return [r for r in lake.read(table).to_pylist() if r["source"] == str(log.resolve())]


def _offsets(lake: Lake, table: str, log: Path) -> list[int]:
    return sorted(r["source_offset"] for r in _rows(lake, table, log))


def test_reingesting_a_file_adds_nothing(tmp_path: Path, lake: Lake) -> None:
    log = _write(tmp_path / "a.log", LINES)
    first = ingest_paths(lake, [log], chunk_lines=2)
    assert (first.lines, first.parsed, first.rejected) == (5, 3, 2)
    assert first.reasons == {"bad_rating": 1, "field_count": 1}
    versions = (lake.version("bronze_events"), lake.version("quarantine_events"))
    second = ingest_paths(lake, [log, tmp_path], chunk_lines=2)  # the file twice, even
    assert (second.lines, second.already_ingested_lines, second.files) == (0, 5, 1)
    assert (lake.version("bronze_events"), lake.version("quarantine_events")) == versions
    assert _offsets(lake, "bronze_events", log) == [0, 1, 2, 3, 4]
    assert _offsets(lake, "quarantine_events", log) == [2, 3]


def test_a_grown_file_ingests_only_its_new_lines(tmp_path: Path, lake: Lake) -> None:
    """100 lines, 50 appended (as `>> log` does): 150 rows, not 250."""
    log = _write(tmp_path / "capture.log", _watch_lines(1, 100))
    assert ingest_paths(lake, [log], chunk_lines=30).lines == 100
    _append(log, "\n".join(_watch_lines(101, 50)) + "\n")
    grown = ingest_paths(lake, [log], chunk_lines=30)
    assert (grown.lines, grown.already_ingested_lines, grown.rejected) == (50, 100, 5)
    assert _offsets(lake, "bronze_events", log) == list(range(150))  # line numbers go on
    assert [
        r["raw"]
        for r in sorted(_rows(lake, "bronze_events", log), key=lambda r: r["source_offset"])
    ] == (_watch_lines(1, 150))
    quarantined = _offsets(lake, "quarantine_events", log)
    assert quarantined == [u - 1 for u in range(10, 151, 10)]  # every bad rating, once


def test_a_file_growing_many_times_keeps_two_records_in_the_delta_log(
    tmp_path: Path, lake: Lake
) -> None:
    """However often a capture grows, bronze's log holds two app ids for it (bytes in, their
    fingerprint), each at its latest version, so the transaction set does not grow with it."""
    log = _write(tmp_path / "capture.log", _watch_lines(1, 10))
    ingest_paths(lake, [log], chunk_lines=3)
    for round_ in range(1, 6):
        _append(log, "\n".join(_watch_lines(1 + 10 * round_, 10)) + "\n")
        assert ingest_paths(lake, [log], chunk_lines=3).lines == 10
    assert ingest_paths(lake, [log]).lines == 0  # the last fingerprint still matches the file
    app_ids = {
        json.loads(line)["txn"]["appId"]
        for commit in sorted(Path(lake.path("bronze_events"), "_delta_log").glob("*.json"))
        for line in commit.read_text().splitlines()
        if '"txn"' in line
    }
    key = file_key(str(log.resolve()))
    assert app_ids == {f"ingest:{key}", f"ingest-prefix:{key}"}
    assert lake.txn_version("bronze_events", f"ingest:{key}") == log.stat().st_size


def test_a_partial_last_line_waits_for_its_newline(tmp_path: Path, lake: Lake) -> None:
    log = tmp_path / "live.log"
    log.write_text(LINES[0] + "\n" + LINES[1] + "\n" + "2026-11-22T09:10:00,7,GET /rate/he")
    first = ingest_paths(lake, [log])
    assert (first.lines, first.pending_bytes) == (2, len("2026-11-22T09:10:00,7,GET /rate/he"))
    _append(log, "at+1995=4\n" + LINES[4] + "\n")  # the writer finishes the line, adds one
    second = ingest_paths(lake, [log])
    assert (second.lines, second.rejected, second.pending_bytes) == (2, 0, 0)
    rows = sorted(_rows(lake, "bronze_events", log), key=lambda r: r["source_offset"])
    assert [r["raw"] for r in rows][2] == "2026-11-22T09:10:00,7,GET /rate/heat+1995=4"
    assert [r["parse_status"] for r in rows] == ["ok"] * 4


@pytest.mark.parametrize(
    "change",
    [
        lambda text: text.replace("heat+1995/4", "heat+1995/5"),  # same size, one byte
        lambda text: text.replace("heat+1995/4", "heat+1995/44") + LINES[0] + "\n",  # edited, grew
        lambda text: text[: len(text) // 2],  # truncated
        lambda text: "\n".join(_watch_lines(1, 20)) + "\n",  # replaced by another file
    ],
)
def test_a_file_changed_in_place_is_refused_and_nothing_is_written(
    tmp_path: Path, lake: Lake, change: Any
) -> None:
    log = _write(tmp_path / "a.log", LINES)
    ingest_paths(lake, [log])
    versions = (lake.version("bronze_events"), lake.version("quarantine_events"))
    log.write_text(change(log.read_text()))
    other = _write(tmp_path / "b.log", _watch_lines(1, 3))  # a new file in the same call
    with pytest.raises(ChangedLogFileError, match=r"a\.log") as refused:
        ingest_paths(lake, [log, other])
    assert "b.log" not in str(refused.value)
    assert (lake.version("bronze_events"), lake.version("quarantine_events")) == versions
    assert _rows(lake, "bronze_events", other) == []
    assert _offsets(lake, "bronze_events", log) == [0, 1, 2, 3, 4]


class _CrashAfter:
    """``Lake.append`` that dies after ``commits`` successful appends (a killed ingest)."""

    def __init__(self, lake: Lake, commits: int) -> None:
        self.append = lake.append
        self.left = commits

    def __call__(self, *args: Any, **kwargs: Any) -> bool:
        if self.left == 0:
            raise KeyboardInterrupt("killed")
        self.left -= 1
        return self.append(*args, **kwargs)


@pytest.mark.parametrize("commits", range(8))  # 5 chunks: 5 bronze + 3 quarantine commits
@pytest.mark.parametrize("retry_chunk_lines", [2, 3, 10])
def test_a_crash_at_any_commit_resumes_without_loss_or_duplicates(
    tmp_path: Path,
    lake: Lake,
    monkeypatch: pytest.MonkeyPatch,
    commits: int,
    retry_chunk_lines: int,
) -> None:
    """Killed after any of its commits (quarantine and bronze commit separately per chunk),
    then run again, also with other chunk sizes: every line once in bronze, every reject once
    in quarantine."""
    lines = [
        *LINES,
        "garbage 1",
        "2026-11-22T09:30:00,42,GET /data/m/heat+1995/9.mpg",
        "garbage 2",
        "2026-11-22T09:40:00,7,GET /rate/up+2009=3",
    ]
    log = _write(tmp_path / "a.log", lines)
    monkeypatch.setattr(lake, "append", _CrashAfter(lake, commits))
    with pytest.raises(KeyboardInterrupt):
        ingest_paths(lake, [log], chunk_lines=2)
    monkeypatch.undo()
    ingest_paths(lake, [log], chunk_lines=retry_chunk_lines)
    assert _offsets(lake, "bronze_events", log) == list(range(len(lines)))
    reasons = Counter(r["reason"] for r in _rows(lake, "quarantine_events", log))
    assert reasons == {"bad_rating": 1, "field_count": 3}
    assert _offsets(lake, "quarantine_events", log) == [2, 3, 5, 7]
    assert ingest_paths(lake, [log]).lines == 0


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
