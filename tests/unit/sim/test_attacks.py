"""Injected attacks: specs with clear errors, labelled accounts, good lines left untouched."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flixlake.contract.attack_labels import LABELS_FILE, LabelsError, read_labels
from flixlake.contract.logformat import parse_line
from flixlake.sim import generate
from flixlake.sim.attacks import (
    RATE,
    RECO,
    WATCH,
    AttackSpec,
    AttackSpecError,
    parse_attack,
    plan_attacks,
)
from flixlake.sim.generate import generate_history, plan_calendar
from flixlake.sim.world import World

SMALL = {"n_users": 300, "n_movies": 80, "days": 5, "seed": 5}
ATTACKS = (
    "push:accounts=6",
    "nuke:accounts=5",
    "bandwagon:accounts=4,filler=3",
    "average:accounts=4,filler=3",
    "flood:accounts=2,requests=50",
)


def test_a_spec_takes_the_kinds_defaults_and_the_given_keys() -> None:
    assert parse_attack("push") == AttackSpec(kind="push", accounts=40)
    spec = parse_attack(" bandwagon: accounts=7, filler=3, hours=0.5, target=the+x+2001 ")
    assert (spec.kind, spec.accounts, spec.filler, spec.hours) == ("bandwagon", 7, 3, 0.5)
    assert spec.target == "the+x+2001"
    assert parse_attack("flood").requests == 400


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("shove", "unknown kind 'shove'"),
        ("push:acounts=3", "unknown key 'acounts'"),
        ("push:accounts", "key 'accounts' needs a value"),
        ("push:accounts=2.5", "key 'accounts': '2.5' is not a whole number"),
        ("push:accounts=0", "key 'accounts' must be at least 1"),
        ("push:hours=-1", "key 'hours': '-1' is not a number >= 0"),
        ("push:filler=3", "key 'filler' applies to bandwagon and average"),
        ("nuke:requests=3", "key 'requests' applies to flood"),
        ("flood:target=x", "key 'target' does not apply"),
        ("push:accounts=3,accounts=4", "key 'accounts' given twice"),
        ("push:hour=24", "key 'hour' must be below 24"),
    ],
)
def test_a_bad_spec_names_the_kind_or_key(text: str, message: str) -> None:
    with pytest.raises(AttackSpecError, match=message):
        parse_attack(text)


def test_event_codes_agree_with_generate() -> None:
    assert (RECO, WATCH, RATE) == (generate.RECO, generate.WATCH, generate.RATE)


def test_an_unknown_target_is_refused_by_name() -> None:
    world = World.build(50, 20, seed=1)
    with pytest.raises(AttackSpecError, match="no movie 'nope' in this world"):
        plan_attacks(world, [parse_attack("push:target=nope")], 1, 51)


def test_default_targets_are_obscure_or_a_hit_and_distinct() -> None:
    world = World.build(200, 100, seed=3)
    planned = plan_attacks(world, [parse_attack(k) for k in ("push", "nuke", "bandwagon")], 3, 201)
    rank = np.argsort(np.argsort(-world.movie_popularity))  # 0 = most popular
    push, nuke, bandwagon = (p.target for p in planned)
    assert 50 <= rank[push] < 90 and 50 <= rank[bandwagon] < 90
    assert rank[nuke] < 10
    assert len({push, nuke, bandwagon}) == 3


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("attacked")
    summary = generate_history(out, **SMALL, attacks=[parse_attack(a) for a in ATTACKS])
    return out, summary


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean")
    generate_history(out, **SMALL)
    return out


def _lines(folder: Path) -> list[str]:
    return [
        line
        for path in sorted(folder.glob("events-*.log"))
        for line in path.read_text().splitlines()
    ]


def test_the_good_lines_are_exactly_those_of_the_same_history_without_attacks(
    attacked: tuple[Path, dict[str, Any]], clean: Path
) -> None:
    out, _ = attacked
    genuine = [ln for ln in _lines(out) if int(ln.split(",")[1]) <= SMALL["n_users"]]
    assert genuine == _lines(clean)
    assert not (clean / LABELS_FILE).exists()


def test_labels_name_every_attacking_account_and_nothing_else(
    attacked: tuple[Path, dict[str, Any]],
) -> None:
    out, summary = attacked
    labels = read_labels(out)
    by_kind = labels.accounts_by_kind()
    assert {k: len(v) for k, v in by_kind.items()} == {
        "push": 6,
        "nuke": 5,
        "bandwagon": 4,
        "average": 4,
        "flood": 2,
    }
    in_logs = {int(ln.split(",")[1]) for ln in _lines(out)} - set(range(1, SMALL["n_users"] + 1))
    assert in_logs == set().union(*by_kind.values())
    assert summary["attack_lines"] == sum(
        1 for ln in _lines(out) if int(ln.split(",")[1]) in in_logs
    )
    last_day = dt.datetime(2026, 11, 22)
    for label in labels.attacks:  # default: one day before the last, from 18:00 on
        assert last_day - dt.timedelta(days=1, hours=-18) <= label.start <= label.end


def test_each_kind_behaves_as_documented(attacked: tuple[Path, dict[str, Any]]) -> None:
    out, _ = attacked
    labels = {label.kind: label for label in read_labels(out).attacks}
    events: dict[int, list[Any]] = {}
    for line in _lines(out):
        event = parse_line(line)
        assert event.ok, line  # attack lines are valid MLiP lines, nothing marks them
        events.setdefault(event.user_id, []).append(event)
    world = World.build(SMALL["n_users"], SMALL["n_movies"], SMALL["seed"])
    calendar = plan_calendar(world, dt.date(2026, 11, 18), SMALL["days"], SMALL["seed"])
    from_start = np.flatnonzero(calendar.release_day == 0)
    hits = set(from_start[np.argsort(-world.movie_popularity[from_start])][:30].tolist())
    index = {m: i for i, m in enumerate(world.movie_ids)}
    for account in labels["push"].accounts:
        mine = events[account]
        assert {(e.event_type, e.movie_id) for e in mine} == {
            ("watch", labels["push"].target_movie),
            ("rate", labels["push"].target_movie),
        }
        assert [e.rating for e in mine if e.event_type == "rate"] == [5]
    for account in labels["nuke"].accounts:
        assert [e.rating for e in events[account] if e.event_type == "rate"] == [1]
    for account in labels["bandwagon"].accounts:
        rated = {e.movie_id: e.rating for e in events[account] if e.event_type == "rate"}
        assert rated.pop(labels["bandwagon"].target_movie) == 5
        assert len(rated) == 3 and set(rated.values()) == {5}
        assert {index[m] for m in rated} <= hits  # the filler is popular movies
    for account in labels["average"].accounts:
        rated = [e for e in events[account] if e.event_type == "rate"]
        assert len(rated) == 4
    kinds = Counter(e.event_type for a in labels["flood"].accounts for e in events[a])
    assert kinds == {"reco": 100}


def test_a_campaign_past_the_history_end_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AttackSpecError, match="key 'day': 9 days before the last day"):
        generate_history(tmp_path, **SMALL, attacks=[parse_attack("push:day=9")])


def test_stale_labels_are_removed_when_a_history_has_no_attacks(tmp_path: Path) -> None:
    generate_history(tmp_path, **SMALL, attacks=[parse_attack("push:accounts=2")])
    assert (tmp_path / LABELS_FILE).exists()
    generate_history(tmp_path, **SMALL)
    assert not (tmp_path / LABELS_FILE).exists()


def test_a_malformed_labels_file_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / LABELS_FILE
    path.write_text(json.dumps({"attacks": [{"attack_id": "x", "kind": "shove"}]}))
    with pytest.raises(LabelsError, match=r"attacks\.0\.kind"):
        read_labels(tmp_path)
    with pytest.raises(LabelsError, match="no attack labels"):
        read_labels(tmp_path / "elsewhere.json")
