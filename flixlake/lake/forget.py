"""Forget a user: delete their rows from every table that holds user data, and leave no copy.

The table registry says where user data lives (``TableSpec.user_columns``: integer user ids;
``raw_line_columns``: raw log lines whose 2nd comma field is the user, e.g. quarantined lines
without a parsed user; ``user_list_columns``: lists of user ids, e.g. an alert's accounts). For
each such table :func:`forget_in_table`

1. deletes the user's rows (delta-rs DELETE; files holding them are rewritten without them):
   rows whose user column is the user, whose raw line is theirs, or whose user list holds only
   them; then removes the user from the other lists that hold them (delta-rs UPDATE,
   ``array_remove_all``); ``rows_removed`` counts both;
2. vacuums with zero retention: every removed file goes, so no older version can bring the
   rows back (also files removed long before, e.g. by compaction or an overwrite of a speed view,
   which may hold the user's rows the current version no longer has); files the log never
   mentions (a crashed writer's) go once older than ``orphan_grace_hours``, so a concurrent
   writer's uncommitted files are safe;
3. expires the Delta log (:meth:`~flixlake.lake.store.Lake.expire_log`): a checkpoint of the
   new version, then every older commit, checkpoint and version checksum is deleted. Old
   commits held per-file statistics (min/max of ``user_id`` and of raw lines) and the DELETE's
   own predicate, which names the user; the new checkpoint only describes files without them.

ALS factors saved as plain parquet (``id``, ``features``) are rewritten without the user
(:func:`forget_in_factors`). What was done is recorded in ``forget_requests`` by request id,
per table and factor folder: counts, never the user id.

>>> report = forget_user(Lake("var/lake"), 7, factor_dirs=[])           # doctest: +SKIP
>>> report.rows_removed                                                 # doctest: +SKIP
42
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake.exceptions import CommitFailedError

from flixlake.contract.logformat import MAX_USER_ID
from flixlake.lake.store import Lake
from flixlake.lake.tables import ALL_TABLES, FORGET_REQUESTS, TableSpec

T = TypeVar("T")
FACTOR_ID_COLUMN = "id"  # Spark ALS userFactors: (id int, features array<float>)
DEFAULT_ORPHAN_GRACE_HOURS = 24
_COMMIT_RETRIES = 5


@dataclass(frozen=True)
class Forgotten:
    """What forgetting did to one table or factor folder (no user data)."""

    target: str
    kind: str  # table | model_factors
    rows_removed: int
    files_removed: int
    log_files_removed: int | None = None
    table_version: int | None = None
    error: str | None = None  # the exception's type only: its message may quote the user id


class ForgetIncompleteError(RuntimeError):
    """Some tables or factor folders could not be cleaned; the others were (see the report)."""

    def __init__(self, report: ForgetReport, messages: list[str]) -> None:
        super().__init__(
            f"forget request {report.request_id} incomplete (run it again once fixed):\n"
            + "\n".join(messages)
        )
        self.report = report


@dataclass
class ForgetReport:
    request_id: str
    requested_at: dt.datetime
    completed_at: dt.datetime | None = None
    results: list[Forgotten] = field(default_factory=list)

    @property
    def rows_removed(self) -> int:
        return sum(r.rows_removed for r in self.results)


def user_tables(tables: Iterable[TableSpec] | None = None) -> list[TableSpec]:
    """The registered tables forget must clean (every table that declares user data)."""
    specs = list(tables if tables is not None else ALL_TABLES.values())
    undeclared = [s.name for s in specs if s.user_columns is None]
    if undeclared:
        raise ValueError(
            f"tables {undeclared} declare neither user_columns nor user_columns=() "
            "(flixlake.lake.tables): forget cannot know whether they hold user data"
        )
    return [s for s in specs if s.holds_user_data]


def check_user_id(user_id: int) -> int:
    """A user id as the log contract has them: a positive integer (clear error otherwise)."""
    valid = isinstance(user_id, int) and not isinstance(user_id, bool)
    if not valid or not 0 < user_id <= MAX_USER_ID:
        raise ValueError(f"a user id is an integer from 1 to {MAX_USER_ID}, got {user_id!r}")
    return user_id


def user_predicate(spec: TableSpec, user_id: int) -> str:
    """SQL matching the user's rows: a user column equals the id, or a raw line's user field is it.

    A raw line's user field is its 2nd comma-separated field, spaces and leading zeros stripped
    (the parser reads ``07`` as user 7), compared as a whole: user 17's lines never match 7.
    A list of user ids matches when the user is all it holds (the rest of the lists that hold
    the user are rewritten by :func:`list_updates`).
    """
    uid = check_user_id(user_id)
    terms = [f"{c} = {uid}" for c in spec.user_columns or ()]
    terms += [f"ltrim(trim(split_part({c}, ',', 2)), '0') = '{uid}'" for c in spec.raw_line_columns]
    terms += [
        f"array_has({c}, {uid}) AND cardinality(array_remove_all({c}, {uid})) = 0"
        for c in spec.user_list_columns
    ]
    if not terms:
        raise ValueError(f"{spec.name} holds no user data")
    return " OR ".join(f"({t})" for t in terms)


def list_updates(spec: TableSpec, user_id: int) -> list[tuple[dict[str, str], str]]:
    """Per user-list column: the UPDATE (``{column: expression}``, predicate) that takes the
    user out of every list holding them (e.g. ``[7, 17]`` -> ``[17]``)."""
    uid = check_user_id(user_id)
    return [
        ({c: f"array_remove_all({c}, {uid})"}, f"array_has({c}, {uid})")
        for c in spec.user_list_columns
    ]


def _retrying(fn: Callable[[], T]) -> T:
    """Run a commit, again on a conflict with a concurrent writer (it re-reads the table)."""
    for attempt in range(_COMMIT_RETRIES):
        try:
            return fn()
        except CommitFailedError:
            if attempt == _COMMIT_RETRIES - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def forget_in_table(
    lake: Lake,
    spec: TableSpec,
    user_id: int,
    orphan_grace_hours: int = DEFAULT_ORPHAN_GRACE_HOURS,
) -> Forgotten:
    """Delete the user's rows from one table, vacuum and expire its log (see the module doc)."""
    name = spec.name
    if not lake.exists(name):
        return Forgotten(name, "table", 0, 0, 0, None)
    predicate = user_predicate(spec, user_id)
    removed = _retrying(lambda: lake.delete(name, predicate))
    for updates, where in list_updates(spec, user_id):
        removed += _retrying(partial(lake.update, name, updates, where))
    files = len(lake.vacuum(name, 0))
    files += len(lake.vacuum(name, orphan_grace_hours, full=True))
    log_files = _retrying(lambda: lake.expire_log(name))
    return Forgotten(name, "table", removed, files, log_files, lake.version(name))


def forget_in_factors(folder: Path, user_id: int) -> Forgotten:
    """Rewrite a saved factor folder's parquet files without the user's row.

    Each file is written beside itself under a hidden name and renamed over it (readers see the
    old or the new file); Hadoop's ``.<file>.crc`` checksum of the old bytes is removed, or
    Spark's local reader would refuse the new file.
    """
    uid = check_user_id(user_id)
    rows = files = 0
    for path in sorted(folder.glob("*.parquet")):
        table = pq.read_table(path)
        if FACTOR_ID_COLUMN not in table.column_names:
            continue
        mine = pc.equal(table[FACTOR_ID_COLUMN], pa.scalar(uid, table[FACTOR_ID_COLUMN].type))
        hits = int(pc.sum(mine).as_py() or 0)
        if not hits:
            continue
        kept = table.filter(pc.invert(mine))
        tmp = path.with_name(f".{path.name}.forget-tmp")
        pq.write_table(kept, tmp)
        os.replace(tmp, path)
        path.with_name(f".{path.name}.crc").unlink(missing_ok=True)
        rows += hits
        files += 1
    return Forgotten(str(folder), "model_factors", rows, files)


def record_request(lake: Lake, report: ForgetReport) -> None:
    """One ``forget_requests`` row per table and factor folder: counts, never the user id."""
    completed = report.completed_at or dt.datetime.now(dt.UTC)
    rows = [
        {
            "request_id": report.request_id,
            "requested_at": report.requested_at,
            "target": r.target,
            "kind": r.kind,
            "rows_removed": r.rows_removed,
            "files_removed": r.files_removed,
            "log_files_removed": r.log_files_removed,
            "table_version": r.table_version,
            "error": r.error,
            "completed_at": completed,
        }
        for r in report.results
    ]
    lake.upsert(FORGET_REQUESTS.name, pa.Table.from_pylist(rows, schema=FORGET_REQUESTS.schema))


def forget_user(
    lake: Lake,
    user_id: int,
    factor_dirs: Iterable[Path] = (),
    orphan_grace_hours: int = DEFAULT_ORPHAN_GRACE_HOURS,
    request_id: str | None = None,
    tables: Iterable[TableSpec] | None = None,
) -> ForgetReport:
    """Remove ``user_id`` from every table holding user data and from saved user factors.

    Safe to repeat: a rerun (e.g. after a crash half-way) deletes what is left and cleans again.
    A target that fails (a table written with a feature delta-rs cannot write, a missing file)
    does not stop the others; all are recorded, then :class:`ForgetIncompleteError` names the
    failed ones with their messages (for the operator; the record keeps the error type only).
    """
    check_user_id(user_id)
    specs = user_tables(tables)
    report = ForgetReport(
        request_id=request_id or uuid.uuid4().hex, requested_at=dt.datetime.now(dt.UTC)
    )
    steps: list[tuple[str, str, Callable[[], Forgotten]]] = [
        (s.name, "table", partial(forget_in_table, lake, s, user_id, orphan_grace_hours))
        for s in specs
    ]
    steps += [
        (str(d), "model_factors", partial(forget_in_factors, d, user_id)) for d in factor_dirs
    ]
    failures: list[str] = []
    for target, kind, step in steps:
        try:
            report.results.append(step())
        except Exception as exc:  # recorded, reported below; the other targets still go
            report.results.append(Forgotten(target, kind, 0, 0, error=type(exc).__name__))
            failures.append(f"{target}: {type(exc).__name__}: {exc}")
    report.completed_at = dt.datetime.now(dt.UTC)
    record_request(lake, report)
    if failures:
        raise ForgetIncompleteError(report, failures)
    return report
