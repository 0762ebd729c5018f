"""Shared fixtures: tiny studies on real SQLite files in tmp_path, run from tmp_path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
STUDIES = REPO / "studies"


def tiny_study(**changes: Any) -> dict[str, Any]:
    """A digits study of a few 2-epoch trials: seconds on a CPU."""
    study: dict[str, Any] = {
        "name": "tiny",
        "task": "digits-mlp",
        "objective": {"metric": "val_loss", "direction": "minimize"},
        "budget": {"n_trials": 3, "epochs": 2},
        "train": {"batch_size": 64, "device": "cpu", "seed": 0},
        "search": {"optimizers": ["adam", "momentum"]},
        "sampler": {"name": "tpe", "seed": 0},
        "pruner": {"name": "none"},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(study.get(key), dict):
            study[key] = {**study[key], **value}
        else:
            study[key] = value
    return study


def write_study(directory: Path, study: dict[str, Any], filename: str = "study.yaml") -> Path:
    path = directory / filename
    path.write_text(f"# lrsearch tune {filename}\n" + yaml.safe_dump(study, sort_keys=False))
    return path


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own directory: default lrsearch.db and mlflow.db land there, never in the repo."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LRSEARCH_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"
