"""Model registry: provenance on register, idempotent reruns, current model, rollback, lineage."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from flixlake.batch.register import git_commit, run_register
from flixlake.config import Settings
from flixlake.lake.registry import (
    UnknownModelError,
    current_published_model,
    get_model,
    model_lineage,
    resolve_model_refs,
    rollback_to,
    set_model_status,
    upsert_model,
)
from flixlake.lake.runs import read_manifest, write_manifest
from flixlake.lake.store import Lake
from flixlake.lake.tables import BATCH_RECOMMENDATIONS, MODEL_EVALUATIONS, WATCH_SESSIONS

RUN = dt.date(2026, 11, 22)
VERSION = "als-20261122-aaaa1111"
T0 = dt.datetime(2026, 11, 20, 3, 0, tzinfo=dt.UTC)


def _manifests(settings: Settings, factors_dir: Path, eval_version: str = VERSION) -> None:
    write_manifest(
        settings,
        RUN,
        "compact",
        {
            "bronze_version": 7,
            "output_versions": {"watch_sessions": 3, "ratings": 2, "movies": 5, "reco_requests": 4},
        },
    )
    write_manifest(
        settings,
        RUN,
        "train",
        {
            "model_version": VERSION,
            "params": {"rank": 8, "reg_param": 0.1, "alpha": 10.0},
            "search": [
                {"params": {"rank": 8, "reg_param": 0.1, "alpha": 10.0}, "ndcg": 0.21},
                {"params": {"rank": 4, "reg_param": 0.1, "alpha": 10.0}, "ndcg": 0.17},
            ],
            "input_versions": {
                "watch_sessions": 3,
                "ratings": 2,
                "movies": 1,
            },  # movies pinned at 1
            "factors": {
                "final": {
                    "users": str(factors_dir / "final" / "users"),
                    "items": str(factors_dir / "final" / "items"),
                }
            },
        },
    )
    write_manifest(
        settings,
        RUN,
        "evaluate",
        {
            "model_version": eval_version,
            "k": 20,
            "als": {"ndcg": 0.25, "precision": 0.1, "recall": 0.3, "map": 0.12, "n_users": 40},
            "popularity": {
                "ndcg": 0.2,
                "precision": 0.08,
                "recall": 0.22,
                "map": 0.09,
                "n_users": 40,
            },
            "lift_ndcg": 1.25,
            "segments": [],
        },
    )


def _model_row(
    version: str,
    status: str,
    published_at: dt.datetime | None,
    ndcg: float = 0.3,
    registered_at: dt.datetime = T0,
) -> dict[str, Any]:
    return {
        "model_version": version,
        "run_date": registered_at.date(),
        "algorithm": "als",
        "params": {"rank": 8},
        "metrics": {"k": 20, "als": {"ndcg": ndcg}, "popularity": {"ndcg": 0.1}},
        "input_versions": {"watch_sessions": 1},
        "git_commit": "c0ffee",
        "library_versions": {"python": "3.11"},
        "artifact_path": f"/models/{version}",
        "status": status,
        "status_reason": None,
        "registered_at": registered_at,
        "published_at": published_at,
    }


def _batch_view(lake: Lake, version: str) -> None:
    lake.append(
        "batch_recommendations",
        pa.Table.from_pylist(
            [{"user_id": 1, "rank": 1, "movie_id": "m", "score": 1.0, "model_version": version}],
            schema=BATCH_RECOMMENDATIONS.schema,
        ),
    )


@pytest.fixture
def registered(
    lake: Lake, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    monkeypatch.setenv("FLIXLAKE_GIT_COMMIT", "0123abcd")
    _manifests(settings, tmp_path / "models" / VERSION)
    return run_register(None, lake, settings, RUN)


def test_register_records_provenance(
    registered: dict[str, Any], lake: Lake, tmp_path: Path
) -> None:
    rows = lake.read("models").to_pylist()
    assert len(rows) == 1
    row = rows[0]
    assert row["model_version"] == VERSION
    assert row["run_date"] == RUN
    assert row["status"] == "registered"
    assert row["published_at"] is None
    assert row["git_commit"] == "0123abcd"
    params = json.loads(row["params"])
    assert {k: params[k] for k in ("rank", "reg_param", "alpha")} == {
        "rank": 8,
        "reg_param": 0.1,
        "alpha": 10.0,
    }
    # the whole search that chose them lands in the models row too
    assert [t["ndcg"] for t in params["search"]["trials"]] == [0.21, 0.17]
    assert params["search"]["fit_failures"] == []
    assert json.loads(row["metrics"])["als"]["ndcg"] == 0.25
    assert json.loads(row["metrics"])["popularity"]["ndcg"] == 0.2
    # bronze from compact, silver as compacted, but the version training pinned wins (movies 1)
    assert json.loads(row["input_versions"]) == {
        "bronze_events": 7,
        "watch_sessions": 3,
        "ratings": 2,
        "movies": 1,
        "reco_requests": 4,
    }
    libs = json.loads(row["library_versions"])
    assert libs["pyspark"] == "4.2.0"
    assert libs["deltalake"] == "1.6.6"
    assert libs["numpy"] == metadata.version("numpy")
    assert libs["pyarrow"] == metadata.version("pyarrow")
    assert libs["python"].startswith("3.11.")
    assert row["artifact_path"] == str(tmp_path / "models" / VERSION / "final")
    assert Path(registered["report"]).is_file()


def test_register_writes_its_manifest(registered: dict[str, Any], settings: Settings) -> None:
    manifest = read_manifest(settings, RUN, "register")
    assert manifest["model_version"] == VERSION
    assert manifest["input_versions"]["bronze_events"] == 7
    assert manifest["report"].endswith(".html")


def test_rerun_merges_and_never_demotes_a_published_model(
    registered: dict[str, Any], lake: Lake, settings: Settings
) -> None:
    first = get_model(lake, VERSION)
    published_at = dt.datetime(2026, 11, 22, 4, 0, tzinfo=dt.UTC)
    set_model_status(lake, VERSION, "published", "passed", published_at=published_at)
    run_register(None, lake, settings, RUN)
    rows = lake.read("models").to_pylist()
    assert len(rows) == 1
    assert rows[0]["status"] == "published"
    assert rows[0]["status_reason"] == "passed"
    assert rows[0]["published_at"] == published_at
    assert rows[0]["registered_at"] == first["registered_at"]


def test_register_refuses_an_evaluation_of_another_model(
    lake: Lake, settings: Settings, tmp_path: Path
) -> None:
    _manifests(settings, tmp_path, eval_version="als-older")
    with pytest.raises(ValueError, match="rerun evaluate"):
        run_register(None, lake, settings, RUN)
    assert not lake.exists("models")


def test_current_model_is_the_latest_published(lake: Lake) -> None:
    assert current_published_model(lake) is None
    t1, t2, t3 = (T0 + dt.timedelta(days=d) for d in (1, 2, 3))
    upsert_model(lake, _model_row("a", "published", t1))
    upsert_model(lake, _model_row("b", "published", t2))
    upsert_model(lake, _model_row("c", "rejected", t3))  # rejected after a publish: not current
    upsert_model(lake, _model_row("d", "registered", None))
    current = current_published_model(lake)
    assert current is not None
    assert current["model_version"] == "b"
    assert current["metrics"]["als"]["ndcg"] == 0.3  # JSON columns come back parsed
    excluded = current_published_model(lake, exclude="b")
    assert excluded is not None and excluded["model_version"] == "a"
    before = current_published_model(lake, published_before=t1)
    assert before is None


def test_model_refs_resolve_to_current_previous_and_named_versions(lake: Lake) -> None:
    assert resolve_model_refs(lake, ["current", "previous"]) == {"current": None, "previous": None}
    t1, t2, t3 = (T0 + dt.timedelta(days=d) for d in (1, 2, 3))
    upsert_model(lake, _model_row("a", "published", t1))
    assert resolve_model_refs(lake, ["previous"]) == {"previous": None}  # nothing before "a"
    upsert_model(lake, _model_row("b", "published", t2))
    upsert_model(lake, _model_row("c", "rejected", t3))
    resolved = resolve_model_refs(lake, ["current", "previous", "c", "nope"])
    versions = {ref: row["model_version"] if row else None for ref, row in resolved.items()}
    assert versions == {"current": "b", "previous": "a", "c": "c", "nope": None}


def test_set_status_rejects_unknown_models_and_statuses(lake: Lake) -> None:
    upsert_model(lake, _model_row("a", "registered", None))
    with pytest.raises(UnknownModelError, match="no model 'zz'"):
        set_model_status(lake, "zz", "published")
    with pytest.raises(ValueError, match="unknown model status"):
        set_model_status(lake, "a", "shipped")


def test_rollback_makes_the_earlier_model_current(lake: Lake) -> None:
    t1, t2, t3 = (T0 + dt.timedelta(days=d) for d in (1, 2, 3))
    upsert_model(lake, _model_row("a", "published", t1))
    upsert_model(lake, _model_row("b", "published", t2))
    upsert_model(lake, _model_row("c", "published", t3))
    upsert_model(lake, _model_row("r", "rejected", None))
    for version in ("a", "b", "c"):
        _batch_view(lake, version)

    result = rollback_to(lake, "a")

    assert result == {"current": "a", "rolled_back": ["b", "c"]}
    current = current_published_model(lake)
    assert current is not None and current["model_version"] == "a"
    assert current["published_at"] == t1  # its publication time is not rewritten
    assert get_model(lake, "c")["status"] == "rolled_back"
    assert get_model(lake, "c")["status_reason"] == "rolled back to a"
    with pytest.raises(ValueError, match="only a published model"):
        rollback_to(lake, "r")


def test_rollback_needs_the_batch_view(lake: Lake) -> None:
    upsert_model(lake, _model_row("a", "published", T0))
    _batch_view(lake, "other")
    with pytest.raises(ValueError, match="batch view is empty"):
        rollback_to(lake, "a")


def test_lineage_has_row_evaluations_and_the_commits_of_pinned_inputs(lake: Lake) -> None:
    session = {
        "user_id": 1,
        "movie_id": "m",
        "movie_idx": 0,
        "minutes_watched": 3,
        "max_minute": 2,
        "first_time": T0,
        "last_time": T0,
        "event_date": T0.date(),
    }
    lake.append(
        "watch_sessions",
        pa.Table.from_pylist([session], schema=WATCH_SESSIONS.schema),
        metadata={"run_date": "2026-11-20"},
    )  # version 1: 1 row
    lake.append(
        "watch_sessions", pa.Table.from_pylist([session, session], schema=WATCH_SESSIONS.schema)
    )  # version 2: 2 rows
    row = _model_row("a", "registered", None)
    row["input_versions"] = {"watch_sessions": 1, "ratings": 9}  # ratings never written here
    upsert_model(lake, row)
    evaluation = {
        "model_version": "a",
        "run_date": T0.date(),
        "recommender": "als",
        "segment": "all",
        "metric": "ndcg",
        "value": 0.3,
        "n_users": 12,
    }
    lake.append(
        "model_evaluations",
        pa.Table.from_pylist(
            [evaluation, {**evaluation, "model_version": "other"}], schema=MODEL_EVALUATIONS.schema
        ),
    )

    lineage = model_lineage(lake, "a")

    json.dumps(lineage)  # JSON-ready for `flixlake lineage`
    assert lineage["model"]["git_commit"] == "c0ffee"
    assert lineage["model"]["registered_at"] == "2026-11-20T03:00:00+00:00"
    assert [(e["model_version"], e["value"]) for e in lineage["evaluations"]] == [("a", 0.3)]
    ws = lineage["inputs"]["watch_sessions"]
    assert ws["version"] == 1
    assert ws["latest_version"] == 2
    assert ws["commit"]["operation"] == "WRITE"
    assert ws["commit"]["operationMetrics"]["num_added_rows"] == 1
    assert ws["commit"]["run_date"] == "2026-11-20"  # custom commit metadata is kept
    assert lineage["inputs"]["ratings"] == {"version": 9, "latest_version": None, "commit": None}
    assert lineage["batch_view_rows"] == 0
    with pytest.raises(UnknownModelError):
        model_lineage(lake, "missing")


def test_git_commit_prefers_the_env_var_then_git_then_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLIXLAKE_GIT_COMMIT", "feedface")
    assert git_commit(tmp_path) == "feedface"
    monkeypatch.delenv("FLIXLAKE_GIT_COMMIT")
    assert git_commit(tmp_path) == "unknown"  # not a repository
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    (tmp_path / "f.txt").write_text("1")
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "f.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "f.txt").write_text("2")
    assert git_commit(tmp_path) == f"{head}-dirty"


def test_non_finite_metrics_are_stored_as_standard_json(lake: Lake) -> None:
    row = _model_row("a", "registered", None)
    row["metrics"] = {"lift_ndcg": float("inf"), "als": {"ndcg": float("nan")}}
    upsert_model(lake, row)
    raw = lake.read("models").to_pylist()[0]["metrics"]
    assert json.loads(raw, parse_constant=lambda c: pytest.fail(f"non-standard {c}")) == {
        "lift_ndcg": "inf",
        "als": {"ndcg": "nan"},
    }
