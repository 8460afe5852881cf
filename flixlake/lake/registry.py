"""The model registry: one ``models`` row per trained model, with provenance and publication status.

The batch step ``register`` (:mod:`flixlake.batch.register`) writes a row; everything here reads or
updates the table through delta-rs only, so the HTTP service, the speed layer and the CLI use it
without pyspark.

Statuses: ``registered`` (after register), ``published`` (the publication gate passed and the
batch view is written), ``rejected`` (the gate refused, with the reason) and ``rolled_back``
(was published, then an engineer rolled back to an earlier model). The *current* model is the
published one with the latest ``published_at``.

>>> current_published_model(Lake("var/lake"))["model_version"]        # doctest: +SKIP
'als-2026-11-22-3f2a9c1e'
>>> rollback_to(Lake("var/lake"), "als-2026-11-21-77aa01bc")          # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from flixlake.config import EXPLORE_MODEL
from flixlake.lake.store import Lake
from flixlake.lake.tables import MODELS, SERVED_RECOMMENDATIONS

if TYPE_CHECKING:  # run_register receives a session; the rest of the module never needs Spark
    pass


BRONZE_TABLE = "bronze_events"
SERVED = SERVED_RECOMMENDATIONS.name
REGISTERED = "registered"
PUBLISHED = "published"
REJECTED = "rejected"
ROLLED_BACK = "rolled_back"
STATUSES = (REGISTERED, PUBLISHED, REJECTED, ROLLED_BACK)
# how an experiment variant names its model: these two, or an explicit model_version
CURRENT = "current"  # the published model with the latest published_at
PREVIOUS = "previous"  # the published model that one replaced
# no model: randomised recommendations from the catalog (exploration); answers record it as
# their model version, so served_recommendations, lineage and the audits can tell them apart
EXPLORE = EXPLORE_MODEL
_JSON_COLUMNS = ("params", "metrics", "input_versions", "library_versions")


class UnknownModelError(LookupError):
    """No ``models`` row has this model version."""


# -- reading the registry ------------------------------------------------------------------------
def recommender_of(model: Mapping[str, Any]) -> str:
    """What a model serves: ``params.recommender`` (als, popularity, itemknn, ease), else ALS
    (rows registered before baselines could be published)."""
    kind = (model.get("params") or {}).get("recommender")
    if kind:
        return str(kind)
    algorithm = str(model.get("algorithm") or "als")
    return "als" if algorithm.startswith("als") else algorithm


def _parse(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for column in _JSON_COLUMNS:
        value = out.get(column)
        out[column] = json.loads(value) if isinstance(value, str) and value else {}
    return out


def model_rows(lake: Lake, filters: Any = None) -> list[dict[str, Any]]:
    if not lake.exists(MODELS.name):
        return []
    return [_parse(r) for r in lake.read(MODELS.name, filters=filters).to_pylist()]


def get_model(lake: Lake, model_version: str) -> dict[str, Any]:
    """One model's row (JSON columns parsed); a clear error for an unknown version."""
    rows = model_rows(lake, filters=[("model_version", "=", model_version)])
    if not rows:
        known = [r["model_version"] for r in list_models(lake)[-5:]]
        raise UnknownModelError(f"no model {model_version!r} in the registry; latest: {known}")
    return rows[0]


def list_models(lake: Lake) -> list[dict[str, Any]]:
    """All models, oldest registration first (for ``flixlake models`` and dashboards)."""
    return sorted(model_rows(lake), key=lambda r: (r["registered_at"], r["model_version"]))


def current_published_model(
    lake: Lake,
    exclude: str | None = None,
    published_before: dt.datetime | None = None,
) -> dict[str, Any] | None:
    """The model the service should serve: the latest ``published_at`` among published ones.

    ``exclude``/``published_before`` let the publication gate find the model a candidate
    replaces (itself excluded; on a rerun, only models published before it).
    """
    candidates = [
        r
        for r in model_rows(lake, filters=[("status", "=", PUBLISHED)])
        if r["published_at"] is not None
        and r["model_version"] != exclude
        and (published_before is None or r["published_at"] < published_before)
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda r: (r["published_at"], r["model_version"]))


def resolve_model_refs(lake: Lake, refs: Iterable[str]) -> dict[str, dict[str, Any] | None]:
    """Each model reference (``current``, ``previous`` or a model version) -> its ``models`` row,
    None when there is none (no published model yet, nothing published before it, unknown, or
    ``explore``, which names no model)."""
    wanted = set(refs)
    current = None
    if wanted & {CURRENT, PREVIOUS}:
        current = current_published_model(lake)
    resolved: dict[str, dict[str, Any] | None] = {}
    for ref in wanted:
        if ref == CURRENT:
            resolved[ref] = current
        elif ref == PREVIOUS:
            resolved[ref] = current and current_published_model(
                lake, exclude=current["model_version"], published_before=current["published_at"]
            )
        elif ref == EXPLORE:
            resolved[ref] = None
        else:
            rows = model_rows(lake, filters=[("model_version", "=", ref)])
            resolved[ref] = rows[0] if rows else None
    return resolved


# -- writing the registry ------------------------------------------------------------------------
def _strict_json(value: Any) -> Any:
    """inf/nan (e.g. an infinite lift over a zero baseline) as strings: keep the JSON standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    return value


def _to_arrow(row: dict[str, Any]) -> pa.Table:
    out = dict(row)
    for column in _JSON_COLUMNS:
        out[column] = json.dumps(
            _strict_json(out[column]), sort_keys=True, default=str, allow_nan=False
        )
    return pa.Table.from_pylist([out], schema=MODELS.schema)


def upsert_model(lake: Lake, row: dict[str, Any]) -> None:
    """MERGE one model row (JSON columns given as dicts) on ``model_version``."""
    lake.upsert(MODELS.name, _to_arrow(row))


def set_model_status(
    lake: Lake,
    model_version: str,
    status: str,
    reason: str | None = None,
    published_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """Change a model's status (``published_at`` kept unless given); returns the new row."""
    if status not in STATUSES:
        raise ValueError(f"unknown model status {status!r}; expected one of {STATUSES}")
    row = get_model(lake, model_version)
    row["status"] = status
    row["status_reason"] = reason
    if published_at is not None:
        row["published_at"] = published_at
    upsert_model(lake, row)
    return row


def batch_view_rows(lake: Lake, model_version: str) -> int:
    """Rows of a model's partition in ``batch_recommendations`` (from the Delta log, no scan)."""
    if not lake.exists("batch_recommendations"):
        return 0
    actions = pa.table(lake.table("batch_recommendations").get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return 0
    mine = actions.filter(pc.equal(actions["partition.model_version"], model_version))
    return int(pc.sum(mine["num_records"]).as_py() or 0)


def rollback_to(lake: Lake, model_version: str, reason: str | None = None) -> dict[str, Any]:
    """Make an earlier published model current again: every model published after it becomes
    ``rolled_back`` (its batch view stays, so rolling forward is rerunning its publish step).

    Returns ``{"current": <version>, "rolled_back": [<versions>]}``.
    """
    target = get_model(lake, model_version)
    if target["status"] != PUBLISHED or target["published_at"] is None:
        raise ValueError(
            f"cannot roll back to {model_version!r}: its status is {target['status']!r}, "
            "only a published model (with its batch view) can become current again"
        )
    if batch_view_rows(lake, model_version) == 0:
        raise ValueError(f"cannot roll back to {model_version!r}: its batch view is empty or gone")
    newer = sorted(
        (
            r
            for r in model_rows(lake, filters=[("status", "=", PUBLISHED)])
            if r["published_at"] is not None and r["published_at"] > target["published_at"]
        ),
        key=lambda r: (r["published_at"], r["model_version"]),
    )
    note = reason or f"rolled back to {model_version}"
    for row in newer:
        set_model_status(lake, row["model_version"], ROLLED_BACK, note)
    return {"current": model_version, "rolled_back": [r["model_version"] for r in newer]}


# -- lineage -------------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def commit_info(lake: Lake, name: str, version: int) -> dict[str, Any] | None:
    """The Delta history entry (operation, time, metrics) that produced ``name`` at ``version``."""
    if not lake.exists(name):
        return None
    latest = lake.version(name)
    if latest is None or version > latest:
        return None
    for entry in lake.history(name, limit=latest - version + 1):  # newest first; read no more
        if entry.get("version") == version:
            out = dict(entry)
            if isinstance(out.get("timestamp"), int):
                out["timestamp"] = dt.datetime.fromtimestamp(out["timestamp"] / 1000, dt.UTC)
            return out
    return None  # older than the log retention (checkpointed and cleaned up)


def model_lineage(lake: Lake, model_version: str) -> dict[str, Any]:
    """Everything needed to explain or reproduce a model, as JSON-ready data.

    What it serves and why (the gate's choice among ALS and the baselines, its verdict), the
    ``models`` row, its ``model_evaluations`` rows, for each input table the Delta version
    it was trained on with the commit that produced it (and the table's version now), the
    quality checks of its run date, and the size of its batch view.
    """
    model = get_model(lake, model_version)
    evaluations: list[dict[str, Any]] = []
    if lake.exists("model_evaluations"):
        evaluations = lake.read(
            "model_evaluations", filters=[("model_version", "=", model_version)]
        ).to_pylist()
        evaluations.sort(key=lambda r: (r["recommender"], r["segment"], r["metric"]))
    quality: list[dict[str, Any]] = []
    if lake.exists("quality_reports"):
        quality = lake.read(
            "quality_reports", filters=[("run_date", "=", model["run_date"])]
        ).to_pylist()
        quality.sort(key=lambda r: (r["table_name"], r["check_name"]))
    inputs = {
        name: {
            "version": version,
            "latest_version": lake.version(name) if lake.exists(name) else None,
            "commit": commit_info(lake, name, version),
        }
        for name, version in sorted(model["input_versions"].items())
    }
    result = {
        "served": {
            "recommender": recommender_of(model),
            "status": model["status"],
            "why": model["status_reason"],
            "chosen_because": (model["metrics"].get("selection") or {}).get("reason"),
        },
        "model": model,
        "evaluations": evaluations,
        "inputs": inputs,
        "quality_checks": quality,
        "batch_view_rows": batch_view_rows(lake, model_version),
    }
    return dict(_jsonable(result))


def request_lineage(lake: Lake, request_id: str) -> dict[str, Any]:
    """From one served answer to the model behind it, its training data and code versions.

    The ``served_recommendations`` row of ``request_id`` (user, variant, items, latency, time)
    and, unless the answer was a fallback served before any model was loaded or a randomised
    exploration answer, the :func:`model_lineage` of the model version it records.
    """
    rows = lake.read(SERVED, filters=[("request_id", "=", request_id)]).to_pylist()
    if not rows:
        raise LookupError(
            f"request {request_id!r} is not in {SERVED} (the speed-layer job lands served answers "
            "a few seconds after they are given; is it running?)"
        )
    served = min(rows, key=lambda r: (r["served_at"], r["source_offset"]))  # a producer retry
    version = served["model_version"]
    explored = version == EXPLORE
    result: dict[str, Any] = {
        "request": served,
        "model_lineage": model_lineage(lake, version) if version and not explored else None,
    }
    if not version:
        result["note"] = "answered from fallbacks (trending/popular): no model was loaded"
    elif explored:
        result["note"] = "an exploration answer: movies drawn at random from the catalog, no model"
    return dict(_jsonable(result))
