"""The package's shape is a checked contract: one-way layers and no import cycles (import-linter, configured in
pyproject.toml), every module importable on its own, and tests that use only public names."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import REPO

PACKAGE = REPO / "lrsearch"


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_layers_and_acyclic_modules_hold() -> None:
    lint_imports = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    result = subprocess.run([sys.executable, "-c", lint_imports, "--no-cache"], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


def test_every_module_imports_on_its_own_in_a_fresh_interpreter() -> None:
    modules = _modules()
    assert "lrsearch.study.loop" in modules and len(modules) > 40

    def load(module: str) -> tuple[str, int, str]:
        done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO, capture_output=True, text=True)
        return module, done.returncode, done.stderr[-1500:]

    with ThreadPoolExecutor(4) as pool:
        failed = [(m, err) for m, code, err in pool.map(load, modules) if code != 0]
    assert failed == []


@pytest.mark.parametrize("path", sorted((REPO / "tests").glob("test_*.py")), ids=lambda p: p.name)
def test_tests_import_only_public_names(path) -> None:
    private = [f"{node.module}.{alias.name}" for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lrsearch")
               for alias in node.names if alias.name.startswith("_") and not alias.name.endswith("__")]
    assert private == []
