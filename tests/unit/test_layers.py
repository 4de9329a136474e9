"""The import-boundary check (import-linter, configured in pyproject.toml) holds for the tree,
and fails when a layer imports upwards or sideways."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """Run the check on the packages under ``root`` (not the installed ones)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    for package in ("contracts", "workers"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_layer_contract() -> None:
    """Workers never import each other, the domain core imports no infrastructure, and contracts
    imports nothing of workers."""
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "forbidden_import", "broken_contract"),
    [
        ("workers/router/handlers.py", "from workers.executor import handlers", "Layers point down"),
        ("workers/domain/fees.py", "import nats", "Domain core imports no infrastructure"),
        ("workers/domain/fees.py", "from workers.platform import bus", "Layers point down"),
        ("contracts/enums.py", "import workers.domain.fees", "contracts imports nothing of workers"),
        ("workers/executor/handlers.py", "from workers.venues.simulated import venue", "Layers point down"),
    ],
)
def test_a_forbidden_import_breaks_the_check(
    tree_copy: Path, module: str, forbidden_import: str, broken_contract: str
) -> None:
    """The same check fails on a copy of the tree with one forbidden import added."""
    path = tree_copy / module
    path.write_text(path.read_text() + f"\n{forbidden_import}  # noqa\n")
    result = lint_imports(tree_copy)
    assert result.returncode != 0, result.stdout
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(line.startswith(broken_contract) for line in broken), result.stdout
