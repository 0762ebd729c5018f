"""``tune``: validate a study, then create or resume it and run it to its budget, with observers for progress and
tracking. Under torchrun, rank 0 runs the study and every other rank follows it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrsearch.config.overrides import Overrides, resolve_spec
from lrsearch.errors import UsageError
from lrsearch.study.budget import drop_waiting
from lrsearch.study.loop import run_study
from lrsearch.study.observers import Observers, observing
from lrsearch.study.storage import check_storage_url, count_trials, create_study, open_storage, storage_url
from lrsearch.training.devices import torchrun_env

if TYPE_CHECKING:
    import optuna

    from lrsearch.config.spec import StudySpec
    from lrsearch.study.observers import TuneObserver
    from lrsearch.training.prepared import Prepared
    from lrsearch.training.trial import Collective

__all__ = ["StudySetup", "narrow_lr_ranges", "run_tune", "set_up_study", "tune"]


@dataclass
class StudySetup:
    """What ``tune`` has once everything is checked: the study, its storage and what this process loaded."""

    spec: StudySpec
    url: str
    storage: Any
    """The opened storage the study lives on (its heartbeats are recorded there)."""
    study: optuna.Study
    prepared: Prepared
    nproc: int
    """Ranks per trial."""

    @property
    def finished(self) -> bool:
        """The study's budget is complete: nothing to train."""
        return count_trials(self.study) >= self.spec.budget.n_trials


def set_up_study(spec: StudySpec | str | Path | dict[str, Any], overrides: Overrides | None = None, *,
                 storage: str | None = None, study_name: str | None = None, launch: dict[str, Any] | None = None,
                 queue: bool = True) -> StudySetup:
    """Check everything, then create or load the study: the one set-up of ``tune``, of its workers and of the
    process that starts them.

    Nothing is created (no storage file, no study) until the study file, the storage URL, the task and the ranks per
    trial have been checked.

    Args:
        launch: torchrun's environment (this process is one of its ranks), or None.
        queue: Queue the textbook portfolio's configurations that the budget has room for (see
            :func:`~lrsearch.study.prior_search.enqueue_portfolio`); False in a worker, whose launcher queued them.
    """
    from lrsearch.study.warm_start import resolve_warm_start
    from lrsearch.training.prepared import prepare, prepare_rank, ranks_per_trial

    spec = resolve_spec(spec, overrides)
    url = storage_url(storage)
    check_storage_url(url)
    prepared = prepare_rank(spec, launch["local_rank"]) if launch else prepare(spec)
    nproc = ranks_per_trial(spec, prepared.device, launch)
    name = study_name or spec.name
    warm = None
    if spec.search.warm_start and not _exists(name, url):  # resolved once, by the tune that creates the study
        warm = resolve_warm_start(spec, url)
    opened = open_storage(url)
    study = create_study(spec, opened, name, queue=queue, warm_start=warm)
    setup = StudySetup(spec, url, opened, study, prepared, nproc)
    if setup.finished:
        drop_waiting(study, opened)  # e.g. a retry queued while other processes completed the budget
    return setup


def _exists(name: str, url: str) -> bool:
    import optuna

    from lrsearch.errors import StudyNotFoundError

    try:
        return name in optuna.get_all_study_names(open_storage(url, create=False))
    except StudyNotFoundError:
        return False


def run_tune(
    spec: StudySpec | str | Path | dict[str, Any],
    overrides: Overrides | None = None,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    observers: Observers | list[TuneObserver] | None = None,
    workers: int = 1,
    worker: bool = False,
) -> tuple[optuna.Study | None, bool]:
    """Validate everything, then create or resume the study and run it; False when it was already finished.

    Under torchrun, rank 0 runs the study and every other rank follows it (and gets ``None``). ``workers`` is how
    many tune processes share this machine's cores; ``worker`` says this is one of them (its launcher queued the
    portfolio).
    """
    from lrsearch.distributed.gang import open_gang
    from lrsearch.distributed.torchrun import follow_torchrun, open_torchrun_collective
    from lrsearch.training.threads import configure_threads

    spec = resolve_spec(spec, overrides)
    launch = torchrun_env()
    if launch is not None and launch["rank"] != 0:
        follow_torchrun(spec, launch)  # no storage, no observers: trains what rank 0 announces
        return None, False
    setup = set_up_study(spec, storage=storage, study_name=study_name, launch=launch, queue=not worker)
    observers = observing(observers)
    study, prepared, finished = setup.study, setup.prepared, setup.finished
    if finished and launch is None:
        observers.study_finished(study, setup.spec)
        return study, False
    # Every rank and every worker on this machine shares its cores.
    configure_threads(setup.spec.train.threads,
                      workers=launch["local_world_size"] if launch else workers * setup.nproc, prepared=prepared)
    group = open_torchrun_collective(prepared, launch) if launch else open_gang(prepared, setup.nproc)
    with group as collective:
        if finished:
            return study, False  # torchrun: rank 0 still joined, so the other ranks are told to stop
        narrow_lr_ranges(study, prepared)
        _observed(study, setup.storage, prepared, observers, collective)
    return study, True


def _observed(study: optuna.Study, storage: Any, prepared: Prepared, observers: Observers,
              collective: Collective) -> None:
    """Run the study loop between the observers' ``study_started`` and ``study_ended``."""
    observers.study_started(study, prepared.spec)
    try:
        run_study(study, storage, prepared, observers, collective)
    except BaseException as exc:
        observers.study_ended(study, exc)
        raise
    observers.study_ended(study, None)


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
        storage: Optuna storage URL; default ``LRSEARCH_STORAGE``, else ``lrsearch.journal`` here.
        study_name: Defaults to the study file's ``name``.
        observers: Progress display, tracking: see :class:`~lrsearch.study.observers.TuneObserver`.
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
