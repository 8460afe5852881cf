"""The one filter the training input goes through: suspected attacker accounts are left out.

The "detect" step (:mod:`flixlake.batch.detect`) records suspects in ``suspected_accounts``;
training reads that table at the version the "detect" manifest names and drops the events of
every account marked ``excluded`` on this or any earlier run date (an attacker stays out once
caught). What was left out, and why, goes into the train manifest and, through the model's
params, into its ``models`` row:

    {"screened": true, "excluded_accounts": 163, "by_kind": {"rating_burst": 160, ...},
     "suspected_accounts_version": 4, "note": "..."}

Without a "detect" manifest for the run date (a pipeline from before the step existed, a test
that calls training directly) nothing is excluded and the record says so; a detect step that
refused the run (``passed: false``) stops training.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from flixlake.batch.errors import GateFailedError
from flixlake.config import Settings
from flixlake.lake import runs
from flixlake.lake.store import Lake
from flixlake.lake.tables import SUSPECTED_ACCOUNTS


@dataclass(frozen=True)
class Exclusions:
    """Accounts whose events training leaves out, and the record of why."""

    user_ids: tuple[int, ...] = ()
    by_kind: dict[str, int] = field(default_factory=dict)
    version: int | None = None  # suspected_accounts version read
    note: str = ""

    def record(self) -> dict[str, Any]:
        """What the train manifest and the model's params keep."""
        return {
            "screened": self.version is not None,
            "excluded_accounts": len(self.user_ids),
            "by_kind": dict(sorted(self.by_kind.items())),
            "suspected_accounts_version": self.version,
            "note": self.note,
        }


def load_exclusions(lake: Lake, settings: Settings, run_date: dt.date) -> Exclusions:
    """The accounts to leave out of training for ``run_date`` (see the module docstring)."""
    try:
        detect = runs.read_manifest(settings, run_date, "detect")
    except runs.MissingStepError:
        return Exclusions(note=f"detect has not run for {run_date}: nothing excluded")
    if not detect.get("passed", True):
        raise GateFailedError(
            f"detect refused run date {run_date} ({detect.get('suspected')} of "
            f"{detect.get('scored_accounts')} accounts suspected); see suspected_accounts"
        )
    version = detect.get("table_version")
    if version is None:
        return Exclusions(note="detect wrote no suspected_accounts table: nothing excluded")
    if not settings.attacks.mitigation.exclude_from_training:
        return Exclusions(
            version=int(version),
            note="attacks.mitigation.exclude_from_training is off: nothing excluded",
        )
    rows = lake.read(
        SUSPECTED_ACCOUNTS.name,
        version=int(version),
        columns=["user_id", "kind", "run_date"],
        filters=[("run_date", "<=", run_date), ("excluded", "=", True)],
    ).to_pylist()
    latest: dict[int, tuple[dt.date, str]] = {}
    for row in rows:
        user = int(row["user_id"])
        if user not in latest or row["run_date"] >= latest[user][0]:
            latest[user] = (row["run_date"], str(row["kind"]))
    by_kind: dict[str, int] = {}
    for _, kind in latest.values():
        by_kind[kind] = by_kind.get(kind, 0) + 1
    return Exclusions(
        user_ids=tuple(sorted(latest)),
        by_kind=by_kind,
        version=int(version),
        note=f"accounts suspected and excluded on run dates up to {run_date}",
    )


def exclusions_df(spark: SparkSession, exclusions: Exclusions) -> DataFrame:
    """The excluded accounts as a one-column ``user_id`` DataFrame (for an anti-join)."""
    return spark.createDataFrame([(u,) for u in exclusions.user_ids], "user_id long")


def without_accounts(df: DataFrame, accounts_df: DataFrame) -> DataFrame:
    """``df`` without the rows of the accounts in ``accounts_df`` (small: broadcast)."""
    return df.join(F.broadcast(accounts_df.select("user_id")), "user_id", "left_anti")
