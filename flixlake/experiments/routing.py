"""Experiments: route each user to a model version by a stable hash (A/B tests and canaries).

A user's bucket is ``sha1("<experiment>:<user_id>")`` read as a big-endian integer (first 8 bytes)
modulo 10,000; variants own consecutive bucket ranges in the configured order, sized by their
percentage (resolution 0.01 %). The hash does not depend on the process (unlike ``hash()``), so
every replica, restart and offline analysis puts a user in the same variant, and renaming the
experiment reshuffles everyone. Pure functions, no I/O.

A variant whose model is ``explore`` (:data:`~flixlake.lake.registry.EXPLORE`) serves no model:
its users get movies drawn uniformly at random from the catalog (the service's merge,
:mod:`flixlake.serving.recommender`). Such a variant is the control group of feedback-loop
audits: what its users are shown does not depend on what anyone watched before. It may take at
most :data:`MAX_EXPLORE_PERCENT` of the users.

>>> exp = Experiment("canary-2026-11", (Variant("control", "previous", 90.0),
...                                     Variant("canary", "current", 10.0)))
>>> exp.assign(42).name in {"control", "canary"}
True
>>> bucket("canary-2026-11", 42) == bucket("canary-2026-11", 42)
True
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flixlake.config import MAX_EXPLORE_PERCENT
from flixlake.lake.registry import CURRENT, EXPLORE

BUCKETS = 10_000
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
# where a variant's model comes from: the registry's current/previous published model
# (flixlake.lake.registry.resolve_model_refs), or an explicit model version
_NAME_RE = re.compile(NAME_PATTERN)


class ExperimentError(ValueError):
    """An experiment definition is inconsistent (names, percentages)."""


def bucket(experiment: str, user_id: int) -> int:
    """The user's bucket in ``[0, 10000)`` for this experiment (same in every process)."""
    digest = hashlib.sha1(f"{experiment}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def percent_to_buckets(percent: float) -> int:
    """A percentage as a number of buckets; it must be a multiple of 0.01 %."""
    buckets = round(percent * BUCKETS / 100)
    if abs(buckets - percent * BUCKETS / 100) > 1e-6:
        raise ExperimentError(f"percent {percent} is finer than the 0.01 % bucket resolution")
    return buckets


@dataclass(frozen=True)
class Variant:
    """One arm of an experiment: a name, where its model comes from, and its share of users."""

    name: str
    model: str = CURRENT  # "current", "previous", "explore" or an explicit model_version
    percent: float = 100.0

    @property
    def explores(self) -> bool:
        """Randomised answers from the catalog instead of a model's."""
        return self.model == EXPLORE


@dataclass(frozen=True)
class Experiment:
    """Variants with percentages summing to 100, assigned by :func:`bucket`."""

    name: str
    variants: tuple[Variant, ...]
    _upper: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ExperimentError(f"experiment name {self.name!r} must match {NAME_PATTERN}")
        if not self.variants:
            raise ExperimentError(f"experiment {self.name!r} has no variants")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ExperimentError(f"experiment {self.name!r}: duplicate variant names {names}")
        upper, total = [], 0
        for variant in self.variants:
            if not _NAME_RE.match(variant.name):
                raise ExperimentError(f"variant name {variant.name!r} must match {NAME_PATTERN}")
            if not 0 < variant.percent <= 100:
                raise ExperimentError(
                    f"variant {variant.name!r}: percent must be in (0, 100], got {variant.percent}"
                )
            if not variant.model:
                raise ExperimentError(f"variant {variant.name!r}: empty model")
            total += percent_to_buckets(variant.percent)
            upper.append(total)
        if total != BUCKETS:
            raise ExperimentError(
                f"experiment {self.name!r}: variant percentages sum to {total / 100:g}, not 100"
            )
        if self.explore_percent > MAX_EXPLORE_PERCENT:
            raise ExperimentError(
                f"experiment {self.name!r}: exploration variants (model {EXPLORE!r}) take "
                f"{self.explore_percent:g}% of users, more than {MAX_EXPLORE_PERCENT:g}%"
            )
        object.__setattr__(self, "_upper", tuple(upper))

    @property
    def explore_percent(self) -> float:
        """The share of users (in %) getting randomised answers."""
        return sum(v.percent for v in self.variants if v.explores)

    def index_of(self, user_id: int) -> int:
        """Position of the user's variant in ``variants`` (no hashing with a single variant)."""
        if len(self._upper) == 1:
            return 0
        b = bucket(self.name, user_id)
        for i, upper in enumerate(self._upper):
            if b < upper:
                return i
        raise AssertionError("unreachable: the bucket ranges cover [0, BUCKETS)")

    def assign(self, user_id: int) -> Variant:
        """The variant that serves this user."""
        return self.variants[self.index_of(user_id)]

    def bucket_ranges(self) -> dict[str, tuple[int, int]]:
        """``variant -> [first, last + 1)`` bucket range, for documentation and analysis."""
        lower = (0, *self._upper[:-1])
        return {
            v.name: (lo, hi) for v, lo, hi in zip(self.variants, lower, self._upper, strict=True)
        }

    @property
    def models(self) -> tuple[str, ...]:
        """The distinct model references the variants need, in variant order (``explore``, which
        needs none, left out)."""
        return tuple(dict.fromkeys(v.model for v in self.variants if not v.explores))

    @classmethod
    def from_config(cls, config: Any) -> Experiment:
        """Build from a config section with ``name`` and ``variants`` (``name/model/percent``)."""
        return cls(
            str(config.name),
            tuple(Variant(str(v.name), str(v.model), float(v.percent)) for v in config.variants),
        )


def single_variant(model: str = CURRENT, name: str = "default") -> Experiment:
    """No experiment: everyone gets ``model`` (variant ``control``)."""
    return Experiment(name, (Variant("control", model, 100.0),))


def split_counts(experiment: Experiment, user_ids: Iterable[int]) -> dict[str, int]:
    """How many of ``user_ids`` each variant gets (every variant listed, zero included)."""
    counts = Counter(experiment.assign(u).name for u in user_ids)
    return {v.name: counts.get(v.name, 0) for v in experiment.variants}


def validate_variants(name: str, variants: Sequence[tuple[str, str, float]]) -> None:
    """Raise :class:`ExperimentError` if ``(name, model, percent)`` triples do not form a split."""
    Experiment(name, tuple(Variant(n, m, p) for n, m, p in variants))
