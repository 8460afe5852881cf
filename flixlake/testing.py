"""Lake fixtures shared by the tests and the benchmarks (not used by the platform itself).

>>> record_published_model(lake, "m1", dt.date(2026, 11, 20))                # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from flixlake.lake.store import Lake
from flixlake.lake.tables import MODELS


def record_published_model(
    lake: Lake,
    version: str,
    run_date: dt.date,
    published_at: dt.datetime | None = None,
) -> None:
    """A ``models`` row making ``version`` a published model, as if trained on ``run_date``.

    No factors, metrics or lineage behind it: only what the speed layer's cutoff and the
    service's model choice read. ``published_at`` defaults to 03:00 UTC of ``run_date``.
    """
    at = published_at or dt.datetime.combine(run_date, dt.time(3), tzinfo=dt.UTC)
    row = {
        "model_version": version,
        "run_date": run_date,
        "algorithm": "als",
        "params": "{}",
        "metrics": "{}",
        "input_versions": "{}",
        "git_commit": None,
        "library_versions": "{}",
        "artifact_path": f"/nowhere/{version}",
        "status": "published",
        "status_reason": None,
        "registered_at": at,
        "published_at": at,
    }
    lake.upsert("models", pa.Table.from_pylist([row], schema=MODELS.schema))
