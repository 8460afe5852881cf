"""Labelled attacks through the real batch steps: detected, excluded, and the target falls back.

generate (with push, bandwagon and flood campaigns) -> ingest -> compact -> detect -> train twice
(suspects excluded or not) on one Spark session, then detection precision/recall against the
side-file labels and the push target's exposure in genuine users' top-20 lists.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from flixlake.config import load_settings
from flixlake.lake import runs
from flixlake.lake.store import Lake
from flixlake.ops.attack_drill import run_attack_drill
from flixlake.sim.attacks import parse_attack

pytestmark = pytest.mark.integration

END = dt.date(2026, 11, 22)
# three days before the end: inside the training window of the eval model, which is the final
# model here (no refit) -- one small ALS fit per training keeps the test quick
ATTACKS = [
    "push:accounts=20,day=3",
    "bandwagon:accounts=20,filler=6,day=3",
    "flood:accounts=2,requests=400,day=3",  # ~200 an hour each: twice the limit
]
QUICK_ALS = {
    "batch": {
        "refit_on_full_history": False,
        "als": {
            "grid": [{"rank": 8, "reg_param": 0.1, "alpha": 10.0}],
            "search": {"trials": 1},  # the grid's point only
            "fit_budget_seconds": 3600,  # a busy machine must not skip the one point
        },
    }
}


def test_attacks_are_detected_excluded_and_lose_their_lift(
    spark: SparkSession, tmp_path: Path
) -> None:
    drill = run_attack_drill(
        spark,
        tmp_path,
        users=600,
        movies=150,
        days=10,
        seed=3,
        attacks=[parse_attack(a) for a in ATTACKS],
        end=END,
        overrides=QUICK_ALS,
    )
    detection = drill["detection"]
    for kind in ("push", "bandwagon", "flood"):
        assert detection["kinds"][kind]["recall"] >= 0.9, detection
    assert detection["precision"] >= 0.9, detection

    # the suspects are what training left out, and the model's row says so
    settings = load_settings("test", home=tmp_path, overrides=QUICK_ALS)
    train = runs.read_manifest(settings, END, "train")
    screening = train["params"]["screening"]
    assert screening["screened"] is True
    assert screening["excluded_accounts"] == detection["suspected"]
    assert train["input_versions"]["suspected_accounts"] == screening["suspected_accounts_version"]
    lake = Lake(settings.lake_root)
    reasons = lake.sql("SELECT kind, reason FROM suspected_accounts").to_pylist()
    assert {r["kind"] for r in reasons} >= {"rating_burst", "request_flood"}
    assert all(r["reason"] for r in reasons)

    (push,) = [label for label in drill["labels"].attacks if label.kind == "push"]
    exposure = drill["exposure"][push.target_movie]
    print(json.dumps(drill["exposure"], indent=1))
    assert exposure["unmitigated"]["share"] > exposure["mitigated"]["share"]
