"""The audit's settings: base.yaml's thresholds load, and a bad one fails naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from flixlake.config import DRIFT_INPUTS, ConfigError, load_settings


def test_every_drift_input_has_a_threshold_in_the_base_config(tmp_path: Path) -> None:
    audit = load_settings("test", home=tmp_path).audit
    assert set(audit.drift.inputs) == set(DRIFT_INPUTS)
    assert audit.drift.window_seconds == 86400
    assert audit.requirements.model.attributes == ("gender", "age", "occupation")
    assert audit.requirements.system.min_long_tail_share == 0.2
    limit = audit.drift.limit("event_mix")
    assert limit is not None and limit.max_volume_change == 3.0
    assert audit.drift.limit("nothing") is None


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"drift": {"inputs": {"moviez": {"max_distance": 0.1}}}}, r"audit\.drift\.inputs\.moviez"),
        (
            {"drift": {"inputs": {"ratings": {"max_distance": 1.5}}}},
            r"audit\.drift\.inputs\.ratings",
        ),
        ({"drift": {"window": "5h"}}, r"audit\.drift\.window"),
        ({"requirements": {"model": {"attributes": ["income"]}}}, r"audit\.requirements\.model"),
        ({"requirements": {"system": {"min_long_tail_share": 2}}}, r"min_long_tail_share"),
    ],
)
def test_a_bad_audit_setting_names_its_key(
    tmp_path: Path, override: dict[str, object], key: str
) -> None:
    with pytest.raises(ConfigError, match=key):
        load_settings("test", home=tmp_path, overrides={"audit": override})
