"""The import contracts in pyproject.toml hold, and they would catch a module that breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    only = [arg for contract in contracts for arg in ("--contract", contract)]
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", *only],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(root)},
    )


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """The package and its import contracts, copied where a test may break them."""
    shutil.copytree(
        PROJECT_ROOT / "flixlake",
        tmp_path / "flixlake",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_package_keeps_its_import_contracts(package_copy: Path) -> None:
    result = lint_imports(package_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "source", "contract"),
    [
        ("lake/scratch.py", "import flixlake.batch.silver\n", "layers"),
        ("serving/scratch.py", "import flixlake.streaming.job\n", "layers"),
        ("serving/scratch.py", "import pyspark.sql\n", "no-spark-in-service"),
        ("streaming/scratch.py", "import flixlake.streaming.job\n", "acyclic"),
    ],
)
def test_a_module_that_breaks_a_contract_fails_the_lint(
    package_copy: Path, module: str, source: str, contract: str
) -> None:
    if contract == "acyclic":  # make job import the scratch module back: a cycle of siblings
        job = package_copy / "flixlake" / "streaming" / "job.py"
        job.write_text(job.read_text() + "\nimport flixlake.streaming.scratch  # noqa\n")
        (package_copy / "flixlake" / "streaming" / "scratch.py").write_text("")
    assert lint_imports(package_copy, contract).returncode == 0  # kept before the scratch module
    (package_copy / "flixlake" / module).write_text(source)
    result = lint_imports(package_copy, contract)
    assert result.returncode != 0 and "1 broken" in result.stdout, result.stdout
