"""Where ``flixlake forget`` finds saved user factors, beside the lake-level forget.

ALS user factors are plain parquet under each model's ``artifact_path``
(``{eval,final}/user_factors``, see :mod:`flixlake.batch.training`); every registered model's folder
is searched, and every ``runs/<date>/model`` folder under the artifacts root (a model trained but
not registered yet, or whose row was replaced by a rerun).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from flixlake.lake.store import Lake

FACTOR_FOLDER = "user_factors"


def model_folders(lake: Lake, artifacts_root: Path) -> list[Path]:
    """Every model artifact folder: the ``models`` table's paths and ``runs/*/model``."""
    folders = set((artifacts_root / "runs").glob("*/model"))
    if lake.exists("models"):
        paths = lake.read("models", columns=["artifact_path"])["artifact_path"]
        folders.update(Path(p) for p in pc.unique(paths).to_pylist() if p)
    return sorted(f for f in folders if f.is_dir())


def user_factor_dirs(lake: Lake, artifacts_root: Path) -> list[Path]:
    """Every ``user_factors`` folder under the model folders (eval and final factors)."""
    found = {d for f in model_folders(lake, artifacts_root) for d in f.rglob(FACTOR_FOLDER)}
    return sorted(d for d in found if d.is_dir())
