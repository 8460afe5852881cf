"""The recommenders a run can serve -- ALS and three baselines -- and what names and rebuilds each.

Every run trains ALS (:mod:`flixlake.batch.training`) and evaluates it beside popularity, item-kNN
and EASE (:mod:`flixlake.batch.baselines`) on the same users and test window; the gate
(:mod:`flixlake.batch.gate`) picks one and the publish step serves its top-N for every user. A
baseline has no artifact: it is fitted from the liked pairs of pinned Delta versions in seconds,
so a ``models`` row records its kind, params and input versions, and anyone can refit it
(:func:`flixlake.batch.publish.baseline_top_n` for the batch view,
:func:`flixlake.batch.evaluation.refitted_baseline_lists` when it is the incumbent):

* popularity: distinct watchers per movie over the history up to the run date;
* item-kNN: cosine similarity of movies' liked-by columns, ``neighbours`` per movie;
* EASE: the closed form with ridge ``l2`` (only where the catalog fits ``ease_max_items``).

"Liked" is a pair with confidence > 0 (:mod:`flixlake.batch.features`: a watch, or 3-5 stars);
every pair, liked or not, counts as seen and is never recommended. This module is pure (no
Spark): the gate, the register step and the report use it too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from flixlake.config import Settings
from flixlake.lake.registry import recommender_of

__all__ = [
    "ALS",
    "BASELINES",
    "CANDIDATES",
    "EASE",
    "ITEMKNN",
    "POPULARITY",
    "STRONG_BASELINES",
    "baseline_params",
    "model_version_for",
    "recommender_of",
]

ALS = "als"
POPULARITY = "popularity"
ITEMKNN = "itemknn"
EASE = "ease"
BASELINES = (POPULARITY, ITEMKNN, EASE)
STRONG_BASELINES = (ITEMKNN, EASE)
# simplest first: the gate's tie order
CANDIDATES = (POPULARITY, ITEMKNN, EASE, ALS)


def baseline_params(kind: str, settings: Settings) -> dict[str, Any]:
    """Everything besides the input versions that a baseline of ``kind`` is refitted from."""
    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; expected one of {BASELINES}")
    batch = settings.batch
    params: dict[str, Any] = {
        "recommender": kind,
        "fit_window": "history up to the run date (liked: confidence > 0)",
        "minutes_cap": batch.confidence.minutes_cap,
        "rating_weight": batch.confidence.rating_weight,
        "window_days": {
            "history": batch.history_days,
            "validation": batch.validation_days,
            "eval": batch.eval_days,
        },
    }
    if kind == ITEMKNN:
        params["neighbours"] = batch.baselines.knn_neighbours
    elif kind == EASE:
        params["l2"] = batch.baselines.ease_l2
    return params


def model_version_for(
    kind: str, run_date: dt.date, input_versions: Mapping[str, int], params: Mapping[str, Any]
) -> str:
    """``<kind>-<D>-<hash>``: same kind, inputs and params on the same date, same version."""
    payload = json.dumps(
        {"input_versions": dict(input_versions), "params": dict(params)}, sort_keys=True
    )
    return f"{kind}-{run_date:%Y%m%d}-{hashlib.sha256(payload.encode()).hexdigest()[:8]}"
