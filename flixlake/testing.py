"""Fixtures shared by the tests and the benchmarks (not used by the platform itself): a
published model in a lake, and simulated experiment users.

>>> record_published_model(lake, "m1", dt.date(2026, 11, 20))                # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import math
from statistics import NormalDist

import numpy as np
import pyarrow as pa

from flixlake.experiments.stats import always_valid_p_values, ratio_and_variance, running_moments
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


def clustered_arm(
    rng: np.random.Generator, users: int, hours: int, lift: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One experiment arm's answers as rows ``(hour, user, served, converted)``.

    Each user has their own conversion probability (Beta(2, 6), mean 0.25, plus ``lift``) and
    request rate (Gamma(0.5, 2) x 0.3 answers an hour: most users ask rarely, a few often), so
    a user's answers convert alike: the clustering that makes per-answer statistics wrong.
    """
    p = np.clip(rng.beta(2, 6, users) + lift, 0, 1)
    per_hour = rng.gamma(0.5, 2.0, users) * 0.3
    n = rng.poisson(per_hour[None, :], (hours, users))
    hour, user = np.nonzero(n)
    served = n[hour, user]
    return hour, user, served, rng.binomial(served, p[user])


def simulated_verdicts(
    rng: np.random.Generator,
    users: int,
    hours: int,
    lift: float,
    tau: float,
    min_users: int,
    alpha: float,
) -> dict[str, bool]:
    """One simulated experiment (control, and treatment with ``lift``) read every hour: which
    analyses call a difference at level ``alpha``.

    ``always_valid``: the report's mSPRT over all hourly looks; ``per_user_once``: the per-user
    z-test read once, at the end; ``per_user_every_hour``: that z-test read at every look;
    ``per_answer_once``: the pooled two-proportion z-test counting answers as independent.
    """
    z_crit = NormalDist().inv_cdf(1 - alpha / 2)
    arms = [clustered_arm(rng, users, hours), clustered_arm(rng, users, hours, lift)]
    control, treatment = (running_moments(*arm, hours) for arm in arms)
    (r0, v0), (r1, v1) = ratio_and_variance(control), ratio_and_variance(treatment)
    diff, variance = r1 - r0, v1 + v0
    counted = (control.users >= min_users) & (treatment.users >= min_users)
    z_user = np.abs(diff) / np.sqrt(variance)
    n0, n1 = control.served[-1], treatment.served[-1]
    pooled = (control.converted[-1] + treatment.converted[-1]) / (n0 + n1)
    z_answers = abs(diff[-1]) / math.sqrt(pooled * (1 - pooled) * (1 / n0 + 1 / n1))
    return {
        "always_valid": bool(always_valid_p_values(diff, variance, tau, counted)[-1] < alpha),
        "per_user_once": bool(z_user[-1] > z_crit),
        "per_user_every_hour": bool((counted & (z_user > z_crit)).any()),
        "per_answer_once": bool(z_answers > z_crit),
    }
