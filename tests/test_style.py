"""The code base stays ruff-clean (rules in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import REPO


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff comes with the test extra")
def test_ruff_is_clean() -> None:
    result = subprocess.run(["ruff", "check", "--output-format", "concise", "lrsearch", "tests", "bench"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
