"""The feedback-loop experiment's machinery, end to end on a tiny world: two cycles of the real
broker, speed layer, service and simulator, a retrain in between, then the audit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyspark.sql import SparkSession
from scipy.stats import chisquare

from flixlake.audit.feedback import ALL_USERS, PERSONALISED, SERVED, WATCHED
from flixlake.lake.store import Lake
from flixlake.ops.feedback_loop import CONTROL, EXPLORE_VARIANT, LoopOptions, run_arm

pytestmark = pytest.mark.integration

OPTIONS = LoopOptions(
    users=150,
    movies=50,
    days=6,
    seed=3,
    cycles=2,
    events=2_500,
    rate=500.0,
    minute_seconds=1.0,
    base_env="test",
    extra={
        "batch": {
            "als": {
                "max_iter": 3,
                "grid": [{"rank": 4, "reg_param": 0.1, "alpha": 10}],
                "search": {"trials": 1},
            }
        }
    },
)


def test_two_cycles_with_exploration(spark: SparkSession, tmp_path: Path) -> None:
    arm = run_arm(tmp_path, "explore", OPTIONS, 30.0, spark, say=print)

    # two cycles, each served by its own model: the retrain was published and swapped in
    first, second = arm.cycles
    assert first.model_version != second.model_version
    assert first.retrain_seconds is not None and second.retrain_seconds is None
    sent = first.simulated["sent"] + second.simulated["sent"]
    assert sent == 2 * OPTIONS.events and second.landed_lines >= sent  # nothing lost on the way
    assert first.simulated["reco_requests"]["failed"] == 0

    # every answer landed with its variant; exploration answers name no model
    lake = Lake(arm.lake_root)
    served = lake.read("served_recommendations", columns=["variant", "model_version", "items"])
    variants = served["variant"].to_pylist()
    versions = served["model_version"].to_pylist()
    assert set(variants) == {CONTROL, EXPLORE_VARIANT}
    assert {v for v, m in zip(variants, versions, strict=True) if v == EXPLORE_VARIANT} == {
        EXPLORE_VARIANT
    }
    assert {m for v, m in zip(variants, versions, strict=True) if v == CONTROL} == {
        first.model_version,
        second.model_version,
    }
    assert pc.min(pc.list_value_length(served["items"])).as_py() == 20

    audit = arm.audit
    assert [c.model_version for c in audit.cycles] == [first.model_version, second.model_version]
    keys = {(r.cycle, r.group, r.kind) for r in audit.rows}
    for cycle in (0, 1):
        for group in (CONTROL, EXPLORE_VARIANT, ALL_USERS):
            assert (cycle, group, SERVED) in keys and (cycle, group, WATCHED) in keys
        assert (cycle, EXPLORE_VARIANT, PERSONALISED) not in keys  # no model behind it
        assert (cycle, CONTROL, PERSONALISED) in keys

    # what the definitions imply: uniform draws spread evenly and have the catalog's average
    # popularity; the model's lists are more concentrated; users took movies they were shown
    catalog = np.array(audit.catalog)
    explore_counts = slots_per_movie(served, EXPLORE_VARIANT, catalog)
    assert chisquare(explore_counts).pvalue > 1e-4, explore_counts
    for cycle in (0, 1):
        rows = {(r.group, r.kind): r for r in audit.rows if r.cycle == cycle}
        explore, control = rows[(EXPLORE_VARIANT, SERVED)], rows[(CONTROL, SERVED)]
        assert explore.gini < control.gini
        spread = audit.popularity.std() * math.sqrt(audit.catalog_size / explore.n)
        assert abs(explore.avg_popularity - audit.popularity.mean()) < 5 * spread
        assert rows[(CONTROL, WATCHED)].recommended_share > 0


def slots_per_movie(served: pa.Table, variant: str, catalog: np.ndarray) -> np.ndarray:
    """Slots per catalog movie shown to one variant, over the whole run."""
    table = served.filter(pc.equal(served["variant"], variant))
    movies = pc.list_flatten(table["items"]).to_numpy(zero_copy_only=False)
    index = {m: i for i, m in enumerate(catalog.tolist())}
    counts = np.zeros(catalog.size, dtype=np.int64)
    for movie in movies:
        counts[index[movie]] += 1
    return counts
