"""Start from what you already know (``search.warm_start``, ``tune --warm-start``).

Each entry names an earlier study in the same storage, or a configuration file that ``lrsearch export`` wrote
(``.json``/``.yaml``). Its configuration (a study's answer: :func:`lrsearch.study.results.study_answer`) is fitted
to this study's space and runs first, in place of the textbook portfolio (``search.portfolio: auto``; ``textbook``
runs both, the warm start first); the prior sampler then searches around it instead of around the textbook. The
typical use: the same model grown wider or deeper, more data or epochs, a new seed of the data.

The configurations are resolved once, by the ``tune`` that creates the study, and kept in its user attributes:
every rerun and every worker runs the same ones, even if a source file is gone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrsearch.errors import StudyNotFoundError, UsageError

if TYPE_CHECKING:
    from lrsearch.config.spec import StudySpec

__all__ = ["CONFIG_SUFFIXES", "resolve_warm_start"]
CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


def resolve_warm_start(spec: StudySpec, storage_url: str) -> dict[str, dict[str, Any]]:
    """The warm-start configurations of ``spec`` by label (``warm:<entry>``), fitted to its space. Checked before
    the study's storage is created: a storage that does not exist yet holds no study to start from.

    Raises:
        UsageError: an entry is neither an existing configuration file nor a study in the storage, has no complete
            trial, or uses an optimizer the study does not search.
    """
    from lrsearch.config.priors import fit_to_space
    from lrsearch.study.storage import open_storage

    try:
        storage = open_storage(storage_url, create=False)
    except StudyNotFoundError:
        storage = None
    space = spec.space()
    out: dict[str, dict[str, Any]] = {}
    for entry in spec.search.warm_start:
        config = _read(_beside(entry, spec.source), storage, storage_url)
        fitted = fit_to_space(config, space)
        if fitted is None:
            raise UsageError(f"search.warm_start {entry!r}: its optimizer {config['optimizer']!r} is not searched "
                             f"by this study (search.optimizers: {', '.join(space.optimizers)})")
        out[f"warm:{entry}"] = fitted
    return out


def _beside(entry: str, study_file: str | None) -> str:
    """A relative configuration file is looked for where the command runs, then beside the study file."""
    if Path(entry).suffix in CONFIG_SUFFIXES and not Path(entry).exists() and study_file:
        beside = Path(study_file).parent / entry
        if beside.exists():
            return str(beside)
    return entry


def _read(entry: str, storage: Any, storage_url: str) -> dict[str, Any]:
    """``{"optimizer", "params", "schedule"}`` of a configuration file or of a study's answer."""
    from lrsearch.config.presets import PRESETS, params_from_kwargs

    if Path(entry).suffix in CONFIG_SUFFIXES:
        from lrsearch.training.optimizers import read_config

        if not Path(entry).is_file():
            raise UsageError(f"search.warm_start {entry!r}: no such configuration file")
        exported = read_config(entry)
        name = exported.get("optimizer") if isinstance(exported, dict) else None
        if name not in PRESETS:
            raise UsageError(f"search.warm_start {entry!r}: not a configuration lrsearch export wrote (its optimizer "
                             f"{name!r} is not one of {', '.join(PRESETS)})")
        params = exported.get("params") or params_from_kwargs(name, exported.get("kwargs", {}))
        return {"optimizer": name, "params": params, "schedule": exported.get("schedule") or {"name": "constant"}}
    from lrsearch.study.results import study_answer
    from lrsearch.study.storage import load_study

    try:
        if storage is None:
            raise StudyNotFoundError(f"storage {storage_url!r} does not exist yet")
        source = load_study(entry, storage_url, storage)
    except StudyNotFoundError as exc:
        raise UsageError(f"search.warm_start {entry!r}: not a configuration file ({'/'.join(CONFIG_SUFFIXES)}) "
                         f"nor a study of this storage ({exc})") from None
    return study_answer(source).config
