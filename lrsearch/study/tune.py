"""``tune``: validate a study, then create or resume it and run it to its budget, with observers for progress and
tracking. Under torchrun, rank 0 runs the study and every other rank follows it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrsearch.config.overrides import Overrides, resolve_spec
from lrsearch.errors import UsageError
from lrsearch.study.loop import run_study
from lrsearch.study.storage import check_storage_url, count_trials, create_study, open_storage, storage_url
from lrsearch.training.devices import torchrun_env

if TYPE_CHECKING:
    import optuna

    from lrsearch.config.spec import StudySpec
    from lrsearch.study.trials import TuneObserver
    from lrsearch.training.prepared import Prepared
    from lrsearch.training.trial import Collective


def run_tune(
    spec: StudySpec | str | Path | dict[str, Any],
    overrides: Overrides | None = None,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    observers: list[TuneObserver] | None = None,
    workers: int = 1,
) -> tuple[optuna.Study | None, bool]:
    """Validate everything, then create or resume the study and run it; False when it was already finished.

    Nothing is created (no storage file, no study) until the study file, the storage URL and the task have
    been checked. Under torchrun, rank 0 runs the study and every other rank follows it (and gets ``None``).
    ``workers`` is how many tune processes share this machine's cores.
    """
    from lrsearch.distributed.gang import open_gang
    from lrsearch.distributed.torchrun import follow_torchrun, open_torchrun_collective
    from lrsearch.training.prepared import prepare, prepare_rank, ranks_per_trial
    from lrsearch.training.threads import configure_threads

    spec = resolve_spec(spec, overrides)
    launch = torchrun_env()
    if launch is not None and launch["rank"] != 0:
        follow_torchrun(spec, launch)  # no storage, no observers: trains what rank 0 announces
        return None, False
    url = storage_url(storage)
    check_storage_url(url)
    prepared = prepare_rank(spec, launch["local_rank"]) if launch else prepare(spec)
    nproc = ranks_per_trial(spec, prepared.device, launch)
    opened = open_storage(url)
    study = create_study(spec, opened, study_name or spec.name)
    finished = count_trials(study) >= spec.budget.n_trials
    if finished and launch is None:
        for observer in observers or []:
            observer.study_finished(study, spec)
        return study, False
    # Every rank and every worker on this machine shares its cores.
    configure_threads(spec.train.threads, workers=launch["local_world_size"] if launch else workers * nproc,
                      prepared=prepared)
    group = open_torchrun_collective(prepared, launch) if launch else open_gang(prepared, nproc)
    with group as collective:
        if finished:
            return study, False  # torchrun: rank 0 still joined, so the other ranks are told to stop
        narrow_lr_ranges(study, prepared)
        _observed(study, opened, prepared, list(observers or []), collective)
    return study, True


def _observed(study: optuna.Study, storage: Any, prepared: Prepared, observers: list[TuneObserver],
              collective: Collective) -> None:
    """Run the study loop between the observers' ``study_started`` and ``study_ended``."""
    for observer in observers:
        observer.study_started(study, prepared.spec)
    try:
        run_study(study, storage, prepared, observers, collective)
    except BaseException as exc:
        for observer in observers:
            observer.study_ended(study, exc)
        raise
    for observer in observers:
        observer.study_ended(study, None)


def narrow_lr_ranges(study: optuna.Study, prepared: Prepared) -> None:
    """``search.lr_range: auto``: before the study's first trial, run the LR range test per optimizer and keep
    [suggestion/10, suggestion*10] (clipped to the preset) as that optimizer's lr interval, in the study's user
    attrs, so every rerun and every worker searches the same space."""
    if prepared.spec.search.lr_range != "auto" or "lr_ranges" in study.user_attrs or study.get_trials(deepcopy=False):
        return
    from lrsearch.config.priors import RelativeSpace
    from lrsearch.study.prior_search import PriorSampler
    from lrsearch.training.lr_finder import lr_find, narrowed_lr_ranges

    results = lr_find(prepared)
    ranges = narrowed_lr_ranges(results, prepared.spec.space())
    study.set_user_attr("lr_ranges", {name: [low, high] for name, (low, high) in ranges.items()})
    if isinstance(study.sampler, PriorSampler):  # it samples the relative space, whose lr scale moved with them
        study.sampler.distributions = RelativeSpace(prepared.spec.space().with_lr_ranges(ranges)).distributions()
    study.set_user_attr("lr_suggestions", {name: result.suggested_lr for name, result in results.items()})


def tune(
    spec: StudySpec | str | Path | dict[str, Any],
    *,
    storage: str | None = None,
    study_name: str | None = None,
    observers: list[TuneObserver] | None = None,
    **overrides: Any,
) -> optuna.Study:
    """Run (or resume) a study to its budget and return it.

    Args:
        spec: A study file path, its parsed dict, or a :class:`~lrsearch.config.spec.StudySpec`.
        storage: Optuna storage URL; default ``LRSEARCH_STORAGE`` or ``sqlite:///lrsearch.db``.
        study_name: Defaults to the study file's ``name``.
        observers: Progress display, tracking: see :class:`TuneObserver`.
        **overrides: Single fields to replace, as the CLI flags: ``n_trials``, ``epochs``, ``timeout``,
            ``sampler``, ``pruner``, ``seed``, ``device``, ``nproc_per_trial``, ``lr_range``, ``batch_trials``.

    Returns:
        The study; ``None`` on a non-zero rank under torchrun (rank 0 holds the study).

    Example:
        >>> study = lrsearch.tune("studies/quadratic.yaml", n_trials=5, storage="sqlite:///quad.db")
        >>> sorted(study.best_trial.user_attrs["config"])
        ['optimizer', 'params', 'schedule']
    """
    try:
        options = Overrides(**overrides)
    except TypeError as exc:
        raise UsageError(f"tune(): {exc}") from None
    study, _ = run_tune(spec, options, storage=storage, study_name=study_name, observers=observers)
    return study
