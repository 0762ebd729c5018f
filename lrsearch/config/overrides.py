"""Command-line values (``tune --epochs 5``) that replace single fields of a study file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrsearch.config.spec import StudySpec, load_spec, spec_from_dict


@dataclass
class Overrides:
    """Command-line values that replace single fields of the study file; None leaves the file's value."""

    n_trials: int | None = None
    epochs: int | None = None
    timeout: float | None = None
    sampler: str | None = None
    pruner: str | None = None
    seed: int | None = None
    device: str | None = None
    nproc_per_trial: int | str | None = None
    lr_range: str | None = None
    batch_trials: int | None = None
    warm_start: tuple[str, ...] = ()
    """Added to the study file's ``search.warm_start``."""

    def apply(self, spec: StudySpec) -> StudySpec:
        """A new, validated spec with these values in place; ``--seed`` also seeds a sampler that has no seed."""
        data = spec.model_dump(mode="json")
        updates = {
            ("budget", "n_trials"): self.n_trials, ("budget", "epochs"): self.epochs,
            ("budget", "timeout"): self.timeout, ("sampler", "name"): self.sampler, ("pruner", "name"): self.pruner,
            ("train", "seed"): self.seed, ("train", "device"): self.device,
            ("train", "nproc_per_trial"): self.nproc_per_trial, ("search", "lr_range"): self.lr_range,
            ("train", "batch_trials"): self.batch_trials,
        }
        for (section, key), value in updates.items():
            if value is not None:
                data[section][key] = value
        if self.seed is not None and data["sampler"].get("seed") is None:
            data["sampler"]["seed"] = self.seed
        data["search"]["warm_start"] = [*data["search"].get("warm_start", []), *self.warm_start]
        new = spec_from_dict(data, spec.source or "<study>")
        new.source = spec.source
        return new


def resolve_spec(spec: StudySpec | str | Path | dict[str, Any], overrides: Overrides | None = None) -> StudySpec:
    """A validated spec from a study file path, its parsed dict or a spec, with ``overrides`` applied."""
    if isinstance(spec, (str, Path)):
        spec = load_spec(spec)
    elif isinstance(spec, dict):
        spec = spec_from_dict(spec)
    return overrides.apply(spec) if overrides else spec
