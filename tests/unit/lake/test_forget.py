"""Forgetting a user: every file under the lake root is searched for them afterwards.

A tiny lake where user 7's id is a substring of other users' (17, 70, 707, and "07" written with a
leading zero, which the parser reads as 7): bronze and quarantine come from the real file ingest;
every other registered table holding user data gets rows of 7 and 17 in several commits, one of
them overwritten so that an old, removed file holds user 7 the current version does not, and a
checkpoint whose statistics name user 7. Lists of user ids (``attack_alerts.accounts``) hold 7
alone, 7 among 17/70/707, and 17/707 without 7.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from flixlake.batch.ingest import ingest_paths
from flixlake.config import Settings
from flixlake.lake.forget import (
    ForgetIncompleteError,
    forget_in_factors,
    forget_user,
    user_predicate,
    user_tables,
)
from flixlake.lake.store import Lake, MissingTableError
from flixlake.lake.tables import ALL_TABLES, FORGET_REQUESTS, TableSpec
from flixlake.ops.forget import user_factor_dirs

FORGOTTEN, KEPT = 7, 17
MARKER = "zzsecretseven"  # only in a line of user 7's

DAY1 = [
    "2026-11-22T08:00:00,7,GET /data/m/the+matrix+1999/0.mpg",
    "2026-11-22T08:00:01,17,GET /data/m/the+matrix+1999/0.mpg",
    "2026-11-22T08:00:02,70,GET /data/m/the+matrix+1999/1.mpg",
    "2026-11-22T08:00:03,7,GET /rate/the+matrix+1999=5",
    "2026-11-22T08:00:04,707,GET /rate/the+matrix+1999=4",
    "2026-11-22T08:00:05,7,recommendation request s1, status 200, result: the+matrix+1999, 12 ms",
    f"2026-11-22T08:00:06,07,GET /rate/{MARKER}=9",  # bad rating; "07" is user 7
    "2026-11-22T08:00:07,7",  # wrong field count: no parsed user, only the raw line
    "2026-11-22T08:00:08,17,GET /rate/keep+seventeen=9",  # user 17's bad rating stays
    "2026-11-22T08:00:00,7,GET /data/m/the+matrix+1999/0.mpg",  # duplicate of the first line
    "not a log line at all",
]
DAY2 = [
    "2026-11-23T09:00:00,7,GET /data/m/the+matrix+1999/2.mpg",
    "2026-11-23T09:00:01,17,GET /data/m/the+matrix+1999/2.mpg",
]
USER7_LINES = 6 + 1  # lines of DAY1 and DAY2 whose user field is 7 ("07" included)

EXAMPLE_TIME = dt.datetime(2026, 11, 22, 8, tzinfo=dt.UTC)


def line_user(raw: str | None) -> str | None:
    """The user field of a raw line as the test reads it (2nd comma field, no zeros in front)."""
    parts = (raw or "").split(",")
    return parts[1].strip().lstrip("0") if len(parts) > 1 else None


def trace_patterns(uid: int) -> list[re.Pattern[str]]:
    """Ways a user id shows in table data and in Delta log text."""
    return [
        re.compile(rf"T\d\d:\d\d:\d\d(?:\.\d+)?,\s*0*{uid}\s*(?=[,\"\\]|$)"),  # a raw line
        re.compile(rf"\"user_id\\?\"\s*:\s*{uid}(?![0-9])"),  # statistics (JSON in JSON too)
        re.compile(rf"\buser_id\s*=\s*{uid}(?![0-9])"),  # a DELETE predicate
        re.compile(rf"=\s*'{uid}'"),  # the raw-line part of the predicate
        re.compile(rf"\(\s*\w+\s*,\s*{uid}\s*\)"),  # a list predicate: array_has(accounts, 7)
    ]


# statistics' null counts per column (one level of nesting for struct columns)
NULL_COUNTS = re.compile(r'\\?"nullCount\\?"\s*:\s*\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\}')


def _leaves(table: pa.Table) -> list[tuple[str, pa.ChunkedArray]]:
    """Every leaf column of a table (structs flattened, lists exploded), with its path."""
    out: list[tuple[str, pa.ChunkedArray]] = []
    todo = [(name, table[name]) for name in table.column_names]
    while todo:
        name, col = todo.pop()
        type_ = col.type
        if pa.types.is_struct(type_):
            for i, f in enumerate(type_):
                todo.append((f"{name}.{f.name}", pc.struct_field(col, [i])))
        elif pa.types.is_list(type_) or pa.types.is_large_list(type_):
            todo.append((f"{name}[]", pc.list_flatten(col)))
        elif pa.types.is_map(type_):
            todo.append((f"{name}.key", pa.chunked_array([c.keys for c in col.chunks])))
            todo.append((f"{name}.value", pa.chunked_array([c.items for c in col.chunks])))
        else:
            out.append((name, col))
    return out


def user_traces(root: Path, uid: int, marker: str | None = None) -> list[str]:
    """Every place under ``root`` (data files, the Delta log, checkpoints) that names ``uid``.

    Parquet is decoded with pyarrow: an integer column named ``*user_id*`` or ``id`` (factors), or
    any list of integers (e.g. an alert's accounts), holding it, or a string matching
    :func:`trace_patterns`; other files are read as text.
    """
    patterns = trace_patterns(uid)
    hits: list[str] = []

    def text_hits(where: str, text: str) -> None:
        text = NULL_COUNTS.sub("", text)  # {"user_id": 12} there counts nulls, not user 12
        for p in patterns:
            if p.search(text):
                hits.append(f"{where}: {p.pattern}")
        if marker and marker in text:
            hits.append(f"{where}: {marker}")

    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = str(path.relative_to(root))
        if path.suffix == ".parquet":
            for name, col in _leaves(pq.read_table(path)):
                leaf = name.rsplit(".", 1)[-1].rstrip("[]")
                ids = "user_id" in leaf or leaf == "id" or name.endswith("[]")
                if pa.types.is_integer(col.type) and ids:
                    if uid in col.to_pylist():
                        hits.append(f"{rel}: column {name}")
                elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                    for value in col.drop_null().to_pylist():
                        text_hits(f"{rel}: column {name}", value)
        else:
            text_hits(rel, path.read_bytes().decode("utf-8", errors="replace"))
    return hits


def example_value(field: pa.Field, uid: int, spec: TableSpec) -> Any:
    """A value of the field's type; the user's id in user columns, their line in raw ones."""
    if field.name in (spec.user_columns or ()):
        return uid
    if field.name in spec.raw_line_columns:
        return f"2026-11-22T08:00:00,{uid},GET /data/m/the+matrix+1999/3.mpg"
    t = field.type
    if pa.types.is_integer(t):
        return 1
    if pa.types.is_floating(t):
        return 1.0
    if pa.types.is_boolean(t):
        return True
    if pa.types.is_timestamp(t):
        return EXAMPLE_TIME
    if pa.types.is_date(t):
        return EXAMPLE_TIME.date()
    if pa.types.is_list(t):
        return [1] if pa.types.is_integer(t.value_type) else ["the+matrix+1999"]
    return "the+matrix+1999"


def example_rows(spec: TableSpec, uids: list[int]) -> pa.Table:
    rows = [{f.name: example_value(f, uid, spec) for f in spec.schema} for uid in uids]
    return pa.Table.from_pylist(rows, schema=spec.schema)


def alert_rows(account_lists: list[list[int]]) -> pa.Table:
    """Burst alerts (no ``user_id``) whose ``accounts`` are the given lists of user ids."""
    spec = ALL_TABLES["attack_alerts"]
    rows = [
        {f.name: example_value(f, 0, spec) for f in spec.schema}
        | {"user_id": None, "accounts": accounts}
        for accounts in account_lists
    ]
    return pa.Table.from_pylist(rows, schema=spec.schema)


def write_factors(folder: Path, ids: list[int]) -> Path:
    """ALS factors the way Spark saves them: a part file and Hadoop's checksum beside it."""
    folder.mkdir(parents=True)
    part = folder / "part-00000-abc.snappy.parquet"
    features = [[0.5, float(i)] for i in ids]
    pq.write_table(
        pa.table(
            {
                "id": pa.array(ids, pa.int32()),
                "features": pa.array(features, pa.list_(pa.float32())),
            }
        ),
        part,
    )
    (folder / f".{part.name}.crc").write_bytes(b"crc of the old bytes")
    (folder / "_SUCCESS").write_bytes(b"")
    return part


def write_spark_checksum(lake: Lake, name: str, version: int) -> None:
    """A version checksum as delta-spark 4.4 writes beside each commit (delta-rs does not): its
    ``allFiles`` carries every file's statistics, and Hadoop's checksum of it sits beside it."""
    log = Path(lake.path(name)) / "_delta_log"
    table = lake.table(name, version)
    stats = {"numRecords": 2, "minValues": {"user_id": FORGOTTEN}, "maxValues": {"user_id": KEPT}}
    checksum = {
        "tableSizeBytes": 1,
        "numFiles": 1,
        "allFiles": [{"path": table.file_uris()[0], "stats": json.dumps(stats)}],
    }
    (log / f"{version:020d}.crc").write_text(json.dumps(checksum))
    (log / f".{version:020d}.crc.crc").write_bytes(b"crc")


def build_lake(lake: Lake, settings: Settings, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "events-2026-11-22.log").write_text("\n".join(DAY1) + "\n")
    ingest_paths(lake, [logs / "events-2026-11-22.log"])
    (logs / "events-2026-11-23.log").write_text("\n".join(DAY2) + "\n")
    ingest_paths(lake, [logs])
    lake.compact("bronze_events")  # tombstones: removed files that still hold user 7
    for spec in user_tables():
        if spec.name in ("bronze_events", "quarantine_events"):
            continue
        lake.append(spec.name, example_rows(spec, [FORGOTTEN, KEPT]))
        lake.append(spec.name, example_rows(spec, [KEPT, FORGOTTEN, 70]))
    # the current version lacks user 7, an older (removed) file has them
    lake.overwrite("speed_new_users", example_rows(ALL_TABLES["speed_new_users"], [KEPT]))
    lake.append("attack_alerts", alert_rows([[FORGOTTEN], [FORGOTTEN, KEPT, 70, 707], [KEPT, 707]]))
    lake.table("watch_sessions").create_checkpoint()  # a checkpoint's stats name user 7
    write_spark_checksum(lake, "ratings", 1)
    registered = settings.artifacts_root / "models" / "als-1"
    write_factors(registered / "final" / "user_factors", [FORGOTTEN, KEPT, 70])
    models = example_rows(ALL_TABLES["models"], [0]).set_column(
        ALL_TABLES["models"].schema.get_field_index("artifact_path"),
        "artifact_path",
        pa.array([str(registered)]),
    )
    lake.append("models", models)
    run_model = settings.artifacts_root / "runs" / "2026-11-22" / "model"
    write_factors(run_model / "eval" / "user_factors", [KEPT, FORGOTTEN])
    write_factors(run_model / "eval" / "item_factors", [1, 7])  # item 7 is a movie: kept


def factor_traces(artifacts: Path, uid: int) -> list[str]:
    """User factors that name ``uid`` (item factors' ids are movies, not users)."""
    return [h for h in user_traces(artifacts, uid) if "/item_factors/" not in h]


def without_user(row: dict[str, Any], spec: TableSpec) -> dict[str, Any] | None:
    """The row as it is once user 7 is forgotten (None: gone), read without the code under test:
    gone if a user column or raw line is theirs, or a list of user ids held only them; else the
    lists without them."""
    if any(row[c] == FORGOTTEN for c in spec.user_columns or ()):
        return None
    if any(line_user(row[c]) == str(FORGOTTEN) for c in spec.raw_line_columns):
        return None
    row = dict(row)
    for column in spec.user_list_columns:
        if row[column] is not None and FORGOTTEN in row[column]:
            row[column] = [u for u in row[column] if u != FORGOTTEN]
            if not row[column]:
                return None
    return row


def others_rows(lake: Lake) -> dict[str, list[dict[str, Any]]]:
    """Each user table's rows with user 7 taken out, read independently of the code under test."""
    out = {}
    for spec in user_tables():
        rows = (without_user(r, spec) for r in lake.read(spec.name).to_pylist())
        out[spec.name] = sorted((r for r in rows if r is not None), key=repr)
    return out


@pytest.fixture
def built(lake: Lake, settings: Settings, tmp_path: Path) -> Lake:
    build_lake(lake, settings, tmp_path)
    return lake


def test_forget_leaves_no_trace_of_the_user_in_any_file(
    built: Lake, settings: Settings, tmp_path: Path
) -> None:
    lake = built
    root = Path(lake.root)
    before = user_traces(root, FORGOTTEN, MARKER)
    # the search finds them where they are: data files, commits' statistics, the checkpoint
    assert any(re.match(r"bronze_events/.*part-.*parquet: column user_id", h) for h in before)
    assert any(h.startswith("quarantine_events/part-") and MARKER in h for h in before)
    assert any("_delta_log/" in h and h.endswith(".json: " + trace_patterns(7)[1].pattern)
               for h in before)  # fmt: skip
    assert any(".checkpoint.parquet" in h for h in before)
    assert any(h.startswith("ratings/_delta_log/00000000000000000001.crc") for h in before)
    assert any(h.startswith("speed_new_users/part-") for h in before)  # only in a removed file
    assert any(h.startswith("attack_alerts/part-") and "column accounts[]" in h for h in before)
    assert len(factor_traces(settings.artifacts_root, FORGOTTEN)) == 2
    kept_before = others_rows(lake)
    old_versions = {s.name: lake.version(s.name) for s in user_tables() if lake.exists(s.name)}

    report = forget_user(lake, FORGOTTEN, user_factor_dirs(lake, settings.artifacts_root))

    assert user_traces(root, FORGOTTEN, MARKER) == []
    assert factor_traces(settings.artifacts_root, FORGOTTEN) == []
    assert not [p for p in root.rglob(".*.crc") if not p.with_name(p.name[1:-4]).exists()]
    # user 17 (and 70, 707) intact, row for row, and the search still finds them
    assert others_rows(lake) == kept_before
    assert user_traces(root, KEPT)
    removed = {r.target: r.rows_removed for r in report.results}
    assert removed["bronze_events"] == USER7_LINES  # the duplicate line is a bronze row too
    assert removed["quarantine_events"] == 3  # bad rating ("07"), field count, duplicate
    assert removed["watch_sessions"] == 2
    assert removed["speed_new_users"] == 0  # only an old file had them: vacuumed
    # 2 rows with user_id 7, the alert of 7 alone; the alert with 7 among others is rewritten
    assert removed["attack_alerts"] == 4
    accounts = sorted(r["accounts"] for r in lake.read("attack_alerts").to_pylist())
    assert accounts == [[1], [1], [1], [KEPT, 70, 707], [KEPT, 707]]
    # time travel to a version from before fails: the log starts after the deletion
    for name, version in old_versions.items():
        assert version is not None and version > 0
        with pytest.raises(MissingTableError):
            lake.table(name, version=0)


def test_forget_rewrites_user_factors_and_drops_their_checksums(
    built: Lake, settings: Settings
) -> None:
    dirs = user_factor_dirs(built, settings.artifacts_root)
    assert {d.parent.name for d in dirs} == {"final", "eval"}  # registered model + a run's
    forget_user(built, FORGOTTEN, dirs)
    final = settings.artifacts_root / "models" / "als-1" / "final" / "user_factors"
    assert pq.read_table(final)["id"].to_pylist() == [KEPT, 70]
    assert not list(final.glob(".*.crc"))
    items = settings.artifacts_root / "runs" / "2026-11-22" / "model" / "eval" / "item_factors"
    assert pq.read_table(items)["id"].to_pylist() == [1, 7]


def test_forget_is_recorded_without_the_user_id(built: Lake) -> None:
    report = forget_user(built, FORGOTTEN, [], request_id="req-1")
    rows = built.read("forget_requests").to_pylist()
    assert {r["request_id"] for r in rows} == {"req-1"}
    assert {r["target"] for r in rows} == {s.name for s in user_tables()}
    assert sum(r["rows_removed"] for r in rows) == report.rows_removed > 0
    assert not FORGET_REQUESTS.holds_user_data
    assert not [c for c in FORGET_REQUESTS.columns if "user" in c]
    texts = [v for r in rows for v in r.values() if isinstance(v, str)]
    assert not [t for t in texts if re.search(r"(?<!\d)0*7(?!\d)", t)]
    assert user_traces(Path(built.root) / "forget_requests", FORGOTTEN) == []


def test_forget_twice_and_reingest_bring_nothing_back(built: Lake, tmp_path: Path) -> None:
    forget_user(built, FORGOTTEN, [])
    again = forget_user(built, FORGOTTEN, [])
    assert again.rows_removed == 0
    # the ingest's byte-range record survives the log's expiry: the same files add nothing
    summary = ingest_paths(built, [tmp_path / "logs"])
    assert summary.lines == 0
    assert summary.already_ingested_lines == len(DAY1) + len(DAY2)
    assert user_traces(Path(built.root), FORGOTTEN, MARKER) == []
    assert built.read("bronze_events").num_rows == len(DAY1) + len(DAY2) - USER7_LINES


def test_raw_lines_match_the_whole_user_field(lake: Lake) -> None:
    lines = ["t,7,x", "t,07,x", "t, 7 ,x", "t,7", "t,17,x", "t,70,x", "t,707,x", "7,1,x", "x"]
    spec = ALL_TABLES["quarantine_events"]
    rows = [
        {f.name: example_value(f, 0, spec) for f in spec.schema} | {"raw": line} for line in lines
    ]
    lake.append(spec.name, pa.Table.from_pylist(rows, schema=spec.schema))
    assert lake.delete(spec.name, user_predicate(spec, 7)) == 4
    assert sorted(lake.read(spec.name)["raw"].to_pylist()) == ["7,1,x", "t,17,x", "t,70,x",
                                                               "t,707,x", "x"]  # fmt: skip


def test_every_registered_table_declares_whether_it_holds_user_data() -> None:
    for spec in ALL_TABLES.values():
        assert spec.user_columns is not None, f"{spec.name} declares no user_columns"
        for column in spec.user_list_columns:
            type_ = spec.schema.field(column).type
            assert pa.types.is_list(type_) and pa.types.is_integer(type_.value_type), spec.name
        for field_ in spec.schema:  # a list of integers is a list of users unless declared
            if pa.types.is_list(field_.type) and pa.types.is_integer(field_.type.value_type):
                assert field_.name in spec.user_list_columns, (spec.name, field_.name)
        for column in spec.user_columns:
            assert pa.types.is_integer(spec.schema.field(column).type), (spec.name, column)
        for column in spec.raw_line_columns:
            assert pa.types.is_string(spec.schema.field(column).type), (spec.name, column)
        if "user_id" in spec.columns:
            assert "user_id" in spec.user_columns, f"{spec.name} has user_id but does not say so"


def test_a_table_that_declares_nothing_stops_forget() -> None:
    undeclared = TableSpec("new_table", "someone", "forgot", pa.schema([("user_id", pa.int64())]))
    with pytest.raises(ValueError, match="new_table"):
        user_tables([*ALL_TABLES.values(), undeclared])


@pytest.mark.parametrize("bad", ["0", "-7", "seven"])
def test_cli_refuses_a_bad_user_id(bad: str, settings: Settings) -> None:
    from flixlake.ops.cli import app

    result = CliRunner().invoke(
        app, ["forget", "--user", bad, "--env", "test", "--home", str(settings.home)]
    )
    assert result.exit_code == 2
    assert "user" in result.output.lower()


def test_cli_forgets_and_prints_the_receipt(built: Lake, settings: Settings) -> None:
    from flixlake.ops.cli import app

    result = CliRunner().invoke(
        app, ["forget", "--user", "7", "--env", "test", "--home", str(settings.home)]
    )
    assert result.exit_code == 0, result.output
    request_id = re.search(r"request ([0-9a-f]{32})", result.output)
    assert request_id is not None
    assert set(built.read("forget_requests")["request_id"].to_pylist()) == {request_id.group(1)}
    assert user_traces(Path(built.root), FORGOTTEN, MARKER) == []
    assert factor_traces(settings.artifacts_root, FORGOTTEN) == []


def test_spark_reads_factors_forget_rewrote(spark: Any, tmp_path: Path) -> None:
    """Spark saves factors with Hadoop checksums (.crc); a stale one would fail its reader."""
    from pyspark.sql import types as T

    schema = T.StructType(
        [
            T.StructField("id", T.IntegerType(), False),
            T.StructField("features", T.ArrayType(T.FloatType()), True),
        ]
    )
    folder = tmp_path / "final" / "user_factors"
    rows = [(FORGOTTEN, [0.1, 0.2]), (KEPT, [0.3, 0.4]), (70, None)]
    spark.createDataFrame(rows, schema).coalesce(1).write.parquet(str(folder))
    assert list(folder.glob(".part-*.crc"))

    result = forget_in_factors(folder, FORGOTTEN)

    assert (result.rows_removed, result.files_removed) == (1, 1)
    ids = sorted(r["id"] for r in spark.read.parquet(str(folder)).collect())
    assert ids == [KEPT, 70]


def test_a_failing_target_does_not_stop_the_others(built: Lake, tmp_path: Path) -> None:
    broken = tmp_path / "broken" / "user_factors"
    broken.mkdir(parents=True)
    (broken / "part-00000.parquet").write_bytes(b"not parquet")

    with pytest.raises(ForgetIncompleteError, match="broken/user_factors") as failed:
        forget_user(built, FORGOTTEN, [broken], request_id="req-2")

    assert user_traces(Path(built.root), FORGOTTEN, MARKER) == []  # the tables were cleaned
    rows = {r["target"]: r for r in built.read("forget_requests").to_pylist()}
    assert rows[str(broken)]["error"] == "ArrowInvalid"
    assert rows["bronze_events"]["error"] is None
    assert rows["bronze_events"]["rows_removed"] == USER7_LINES
    assert failed.value.report.request_id == "req-2"
