"""The package map holds (docs/architecture.md): imports follow the data flow, the product never reaches for
the harness, the tests or a repository path."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "connector"


def test_imports_follow_the_layers_of_the_data_flow() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_product_imports_neither_the_harness_nor_the_tests() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                          if n.split(".")[0] in ("harness", "tests", "bench")]
    assert offenders == []


def test_the_product_uses_no_repository_path_at_run_time() -> None:
    """Package data is read through importlib.resources; nothing climbs out of the package directory."""
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in PACKAGE.rglob("*.py")
                 for n, line in enumerate(p.read_text("utf-8").splitlines(), 1)
                 if ".parents[" in line or "REPO_ROOT" in line or '"../' in line or "'../" in line]
    assert offenders == []
