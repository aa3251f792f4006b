"""The dependency direction: tests > benchmarks > stack > frontend | export | sdk > emoserve.

The contracts live in pyproject.toml ([tool.importlinter]) and are checked by import-linter's ``lint-imports``.
The Triton adapters model_repository/<model>/1/model.py are not importable packages (``1`` is no module name),
so an ast walk checks that they import no first-party package but emoserve.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"emoserve", "export", "frontend", "stack", "sdk", "benchmarks", "tests"}


def test_import_contracts_are_kept():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    if not lint_imports.exists():
        pytest.fail(f"{lint_imports} is missing: pip install -e '.[dev]' (import-linter)")
    proc = subprocess.run(
        [str(lint_imports), "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, f"lint-imports found broken contracts:\n{proc.stdout}\n{proc.stderr}"


def _imported_roots(path: Path) -> dict[str, int]:
    """``{top-level package: first line}`` of every import in a file (function-level ones included)."""
    roots: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = ["." if node.level else (node.module or "")]
        else:
            continue
        for name in names:
            roots.setdefault(name.split(".")[0] or ".", node.lineno)
    return roots


def test_triton_adapters_import_only_emoserve():
    adapters = sorted(ROOT.glob("model_repository/*/1/model.py"))
    assert adapters, "no model_repository/*/1/model.py found"
    bad = []
    for path in adapters:
        for root, line in _imported_roots(path).items():
            if root == "." or (root in FIRST_PARTY and root != "emoserve"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {root}")
    assert not bad, "the Triton adapters may import only emoserve:\n" + "\n".join(bad)
