"""Experiment assignment: a documented stable hash, stable across processes, close to the split."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flixlake.config import ConfigError, load_settings
from flixlake.experiments.routing import (
    BUCKETS,
    Experiment,
    ExperimentError,
    Variant,
    bucket,
    single_variant,
    split_counts,
)

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def sha1_bucket(name: str, user: int) -> int:
    """The rule as documented, written out independently."""
    return int(hashlib.sha1(f"{name}:{user}".encode()).hexdigest()[:16], 16) % 10_000


def canary() -> Experiment:
    return Experiment(
        "canary-1", (Variant("control", "previous", 90.0), Variant("canary", "current", 10.0))
    )


def test_bucket_is_sha1_of_experiment_and_user_mod_10000() -> None:
    for user in (1, 42, 999_999, 2_147_483_647):
        assert bucket("exp", user) == sha1_bucket("exp", user)
    assert BUCKETS == 10_000


def test_variants_own_consecutive_bucket_ranges_in_order() -> None:
    exp = canary()
    assert exp.bucket_ranges() == {"control": (0, 9000), "canary": (9000, 10_000)}
    users = range(1, 3000)
    for user in users:
        expected = "control" if sha1_bucket("canary-1", user) < 9000 else "canary"
        assert exp.assign(user).name == expected
    # both sides of the boundary are exercised
    assert {exp.assign(u).name for u in users} == {"control", "canary"}


def test_assignment_is_the_same_in_another_process() -> None:
    users = list(range(1, 200))
    code = (
        "from flixlake.experiments.routing import Experiment, Variant\n"
        "exp = Experiment('canary-1', (Variant('control', 'previous', 90.0), "
        "Variant('canary', 'current', 10.0)))\n"
        f"print(','.join(exp.assign(u).name for u in {users!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().split(",") == [canary().assign(u).name for u in users]


def test_split_is_close_to_the_configured_percentages() -> None:
    n = 20_000
    counts = split_counts(canary(), range(1, n + 1))
    sigma = (n * 0.1 * 0.9) ** 0.5  # binomial standard deviation: 42.4
    assert abs(counts["canary"] - 0.1 * n) < 4 * sigma
    assert counts["control"] + counts["canary"] == n
    three = Experiment(
        "abc", (Variant("a", "m1", 50), Variant("b", "m2", 25), Variant("c", "m3", 25))
    )
    counts3 = split_counts(three, range(1, n + 1))
    for name, share in (("a", 0.5), ("b", 0.25), ("c", 0.25)):
        assert abs(counts3[name] - share * n) < 4 * (n * share * (1 - share)) ** 0.5


def test_renaming_the_experiment_reshuffles_users() -> None:
    a = Experiment("first", (Variant("x", "m1", 50), Variant("y", "m2", 50)))
    b = Experiment("second", (Variant("x", "m1", 50), Variant("y", "m2", 50)))
    users = range(1, 1001)
    same = sum(a.assign(u).name == b.assign(u).name for u in users)
    assert 400 < same < 600  # independent halves agree about half of the time


def test_a_single_variant_gets_everyone() -> None:
    exp = single_variant("current")
    assert {exp.assign(u).name for u in range(1, 500)} == {"control"}
    assert exp.models == ("current",)


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ((Variant("a", "m1", 60), Variant("b", "m2", 30)), "sum to 90"),
        ((Variant("a", "m1", 50), Variant("a", "m2", 50)), "duplicate"),
        ((Variant("a", "m1", 99.995), Variant("b", "m2", 0.005)), "resolution"),
        ((Variant("bad name", "m1", 100),), "must match"),
        ((), "no variants"),
    ],
)
def test_inconsistent_experiments_are_rejected(variants: tuple[Variant, ...], message: str) -> None:
    with pytest.raises(ExperimentError, match=message):
        Experiment("exp", variants)


def test_config_builds_the_experiment_and_rejects_a_bad_split(tmp_path: Path) -> None:
    variants = [
        {"name": "control", "model": "previous", "percent": 95},
        {"name": "canary", "model": "current", "percent": 5},
    ]
    settings = load_settings(
        "test",
        home=tmp_path,
        overrides={"serving": {"experiment": {"name": "c", "variants": variants}}},
    )
    exp = Experiment.from_config(settings.serving.experiment)
    assert [(v.name, v.model, v.percent) for v in exp.variants] == [
        ("control", "previous", 95.0),
        ("canary", "current", 5.0),
    ]
    bad = [{"name": "control", "percent": 95}, {"name": "canary", "percent": 10}]
    with pytest.raises(ConfigError, match=r"serving\.experiment\.variants"):
        load_settings(
            "test", home=tmp_path, overrides={"serving": {"experiment": {"variants": bad}}}
        )
    with pytest.raises(ConfigError, match=r"serving\.speed_refresh_seconds"):
        load_settings("test", home=tmp_path, overrides={"serving": {"speed_refresh_seconds": 5}})
