"""Configuration: ``conf/base.yaml`` merged with ``conf/<FLIXLAKE_ENV>.yaml``, validated once.

One environment variable picks the file (``FLIXLAKE_ENV``, default ``local``) and one says where
all state lives (``FLIXLAKE_HOME``, default ``./var``). A bad file fails at start with a message
that names the offending key, e.g. ``batch.als.grid.0.rank: Input should be greater than 0``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_VAR = "FLIXLAKE_ENV"
HOME_VAR = "FLIXLAKE_HOME"
CONF_DIR_VAR = "FLIXLAKE_CONF_DIR"
DEFAULT_ENV = "local"


class ConfigError(ValueError):
    """A configuration file is missing or invalid; the message names the key."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LakeConfig(_Frozen):
    root: str = "lake"


class ArtifactsConfig(_Frozen):
    root: str = "artifacts"


class SparkConfig(_Frozen):
    master: str = "local[2]"
    app_name: str = "flixlake"
    driver_memory: str = "4g"
    shuffle_partitions: int = Field(8, gt=0)
    extra_conf: dict[str, str] = Field(default_factory=dict)


class KafkaConfig(_Frozen):
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "movielog"
    partitions: int = Field(4, gt=0)


class IngestConfig(_Frozen):
    chunk_lines: int = Field(500_000, gt=0)


class AlsParams(_Frozen):
    rank: int = Field(gt=0)
    reg_param: float = Field(ge=0)
    alpha: float = Field(gt=0)


class AlsConfig(_Frozen):
    max_iter: int = Field(10, gt=0)
    seed: int = 42
    grid: tuple[AlsParams, ...] = Field(min_length=1)


class ConfidenceConfig(_Frozen):
    minutes_cap: int = Field(120, gt=0)
    rating_weight: float = Field(1.0, ge=0)


class PublishConfig(_Frozen):
    min_lift_over_popularity: float = Field(1.0, ge=0)
    max_regression: float = Field(0.05, ge=0, le=1)


class QualityConfig(_Frozen):
    max_null_fraction: float = Field(0.0, ge=0, le=1)
    max_duplicate_fraction: float = Field(0.05, ge=0, le=1)
    min_volume_ratio: float = Field(0.5, ge=0)
    max_quarantine_fraction: float = Field(0.2, ge=0, le=1)


class BatchConfig(_Frozen):
    history_days: int = Field(3650, gt=0)
    eval_days: int = Field(3, gt=0)
    validation_days: int = Field(3, gt=0)
    top_n: int = Field(50, gt=0)
    k: int = Field(20, gt=0)
    eval_max_users: int = Field(20_000, gt=0)
    search_max_users: int = Field(50_000, gt=0)
    refit_on_full_history: bool = True
    heavy_user_min_movies: int = Field(20, gt=0)
    new_user_max_movies: int = Field(3, ge=0)
    confidence: ConfidenceConfig = ConfidenceConfig()
    als: AlsConfig
    publish: PublishConfig = PublishConfig()
    quality: QualityConfig = QualityConfig()


class AirflowConfig(_Frozen):
    schedule: str = "0 3 * * *"
    retries: int = Field(2, ge=0)
    retry_delay_minutes: int = Field(5, ge=0)


class Settings(_Frozen):
    """Validated configuration plus the resolved home folder."""

    env: str = DEFAULT_ENV
    home: Path = Path("var")
    lake: LakeConfig = LakeConfig()
    artifacts: ArtifactsConfig = ArtifactsConfig()
    spark: SparkConfig = SparkConfig()
    kafka: KafkaConfig = KafkaConfig()
    ingest: IngestConfig = IngestConfig()
    batch: BatchConfig
    airflow: AirflowConfig = AirflowConfig()

    @property
    def lake_root(self) -> Path:
        return _under(self.home, self.lake.root)

    @property
    def artifacts_root(self) -> Path:
        return _under(self.home, self.artifacts.root)


def _under(home: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else home / p


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def conf_dir() -> Path:
    """The folder holding ``base.yaml`` and the environment files."""
    if CONF_DIR_VAR in os.environ:
        return Path(os.environ[CONF_DIR_VAR])
    return Path(__file__).resolve().parent.parent / "conf"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"])
        lines.append(f"  {key}: {err['msg']}")
    return "\n".join(lines)


def load_settings(
    env: str | None = None,
    home: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Load and validate the settings for ``env`` (or ``$FLIXLAKE_ENV``) rooted at ``home``."""
    env = env or os.environ.get(ENV_VAR, DEFAULT_ENV)
    home_path = Path(home or os.environ.get(HOME_VAR, "var")).expanduser().resolve()
    directory = conf_dir()
    base_path = directory / "base.yaml"
    env_path = directory / f"{env}.yaml"
    if not base_path.exists():
        raise ConfigError(f"missing {base_path}")
    if not env_path.exists():
        known = sorted(p.stem for p in directory.glob("*.yaml") if p.stem != "base")
        raise ConfigError(f"{ENV_VAR}={env!r}: no {env_path}; known environments: {known}")
    data = _deep_merge(_read_yaml(base_path), _read_yaml(env_path))
    if overrides:
        data = _deep_merge(data, overrides)
    data["env"] = env
    data["home"] = home_path
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, f"{base_path.name} + {env_path.name}")) from exc
