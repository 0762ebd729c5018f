"""Every docstring example runs: what the documentation shows is what the code does (an example that needs a
model, a trial context or a framework the reader brings is marked ``# doctest: +SKIP``)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest
from conftest import REPO

import lrsearch

MODULES = sorted(m.name for m in pkgutil.walk_packages(lrsearch.__path__, "lrsearch.")
                 if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "studies").symlink_to(REPO / "studies")  # examples name the shipped studies; files land here
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name, globs={"lrsearch": lrsearch, **vars(module)}):
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples failed in {name}"


def test_every_public_entry_point_shows_a_running_example() -> None:
    """The names users import from ``lrsearch`` that take a call carry an example that is not skipped."""
    shown = []
    for name in ("build_optimizer", "tune", "lr_find", "Task"):
        tests = doctest.DocTestFinder().find(getattr(lrsearch, name), name)
        examples = [e for t in tests for e in t.examples if not e.options.get(doctest.SKIP)]
        if examples:
            shown.append(name)
    assert shown == ["build_optimizer", "tune", "lr_find", "Task"]
