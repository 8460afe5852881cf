"""Config: environments merge over base, and a bad value fails naming its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flixlake.config import ConfigError, deep_merge, load_settings


def test_test_env_overrides_base(tmp_path: Path) -> None:
    settings = load_settings("test", home=tmp_path)
    assert settings.spark.shuffle_partitions == 2  # from test.yaml
    assert settings.kafka.topic == "movielog"  # from base.yaml
    assert settings.lake_root == tmp_path / "lake"


def test_bad_value_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"batch\.als\.grid\.0\.rank"):
        load_settings(
            "test",
            home=tmp_path,
            overrides={"batch": {"als": {"grid": [{"rank": 0, "reg_param": 0.1, "alpha": 1}]}}},
        )


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (
            {"streaming": {"trending_windows": ["1h", "90 minutes"]}},
            r"streaming\.trending_windows\.1",
        ),
        ({"online": {"watch_window": "0h"}}, r"online\.watch_window"),
        (
            {"attacks": {"detection": {"burst_windows": ["1x"]}}},
            r"attacks\.detection\.burst_windows\.0",
        ),
        ({"attacks": {"stream": {"burst_window": "h"}}}, r"attacks\.stream\.burst_window"),
    ],
)
def test_a_bad_duration_names_its_key(tmp_path: Path, overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key + r": Value error, expected a duration like 90s"):
        load_settings("test", home=tmp_path, overrides=overrides)


def test_deep_merge_merges_nested_mappings_and_replaces_the_rest() -> None:
    base = {"serving": {"host": "0.0.0.0", "port": 8082}, "grid": [1, 2], "name": "a"}
    merged = deep_merge(base, {"serving": {"port": 9000}, "grid": [3], "new": {"x": 1}})

    assert merged == {
        "serving": {"host": "0.0.0.0", "port": 9000},
        "grid": [3],
        "name": "a",
        "new": {"x": 1},
    }
    assert base["serving"] == {"host": "0.0.0.0", "port": 8082}  # the inputs stay as they were


def test_unknown_key_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"spark\.mastr"):
        load_settings("test", home=tmp_path, overrides={"spark": {"mastr": "local"}})


def test_unknown_environment_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="known environments"):
        load_settings("nope", home=tmp_path)


def test_answers_are_capped_at_the_contracts_20_ids(tmp_path: Path) -> None:
    assert load_settings("test", home=tmp_path).serving.results == 20
    with pytest.raises(ConfigError, match=r"serving\.results: Input should be less than or equal"):
        load_settings("test", home=tmp_path, overrides={"serving": {"results": 21}})


@pytest.mark.parametrize("env", ["local", "test", "compose"])
def test_the_service_logs_to_a_topic_of_its_own_not_the_courses(tmp_path: Path, env: str) -> None:
    settings = load_settings(env, home=tmp_path)
    assert settings.serving.telemetry.log_topic not in (settings.kafka.topic, "movielog")
    assert settings.serving.telemetry.log_topic != settings.serving.telemetry.served_topic


def test_a_bad_pushgateway_url_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"monitoring\.pushgateway_url"):
        load_settings(
            "test", home=tmp_path, overrides={"monitoring": {"pushgateway_url": "localhost 9091"}}
        )


def test_search_ranges_and_regularisation_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"batch\.als\.search\.rank"):
        load_settings(
            "test", home=tmp_path, overrides={"batch": {"als": {"search": {"rank": [64, 8]}}}}
        )
    with pytest.raises(ConfigError, match=r"batch\.als\.grid\.0\.reg_param"):
        load_settings(
            "test",
            home=tmp_path,
            overrides={"batch": {"als": {"grid": [{"rank": 8, "reg_param": 0, "alpha": 1}]}}},
        )
