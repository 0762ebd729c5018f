"""Where studies live: Optuna's storage, opened with heartbeats; creating, loading and counting studies.

Two kinds of Optuna storage, chosen by the URL:

- a path ending in ``.journal`` (the default, ``lrsearch.journal``): Optuna's ``JournalStorage`` on its journal
  file format (:mod:`lrsearch.study.journal`), an append-only file shared by the processes of one machine through a
  lock file. A report costs a fraction of a millisecond where SQLite's costs one or two. Optuna keeps no heartbeats
  there: :mod:`lrsearch.study.heartbeat` does.
- an SQLAlchemy URL (``sqlite:///…``, ``postgresql+psycopg://…``, ``mysql…``): Optuna's RDB storage with its own
  heartbeats, for studies shared by several machines.

Either way a trial whose process died is failed once its heartbeat is stale and its parameters are retried.
"""

from __future__ import annotations

import inspect
import os
import random
import re
import time
import warnings
from typing import TYPE_CHECKING, Any

from lrsearch.errors import StorageError, StudyNotFoundError, first_line
from lrsearch.study.algorithms import make_pruner, make_sampler

if TYPE_CHECKING:
    import optuna

    from lrsearch.config.spec import StudySpec

DEFAULT_STORAGE = "lrsearch.journal"
JOURNAL_SUFFIX = ".journal"
HEARTBEAT_INTERVAL = 3
"""Seconds between heartbeats of a running trial; a trial silent for 4 intervals is stale (its process died)."""
GRACE_PERIOD = 4 * HEARTBEAT_INTERVAL
MAX_RETRY = 2
"""How often the parameters of a trial whose process died are retried."""
_SUFFICIENT_STATES = ("COMPLETE", "PRUNED")
_SCHEMA_RETRIES = 6


def storage_url(url: str | None) -> str:
    """``--storage``, else ``LRSEARCH_STORAGE``, else ``lrsearch.journal`` in the current directory."""
    return url or os.environ.get("LRSEARCH_STORAGE") or DEFAULT_STORAGE


def is_journal(url: str) -> bool:
    """A journal file: a path (no ``scheme://``) ending in ``.journal``."""
    return "://" not in url and url.endswith(JOURNAL_SUFFIX)


def mask_password(url: str) -> str:
    """The URL with any password replaced by ``***``, for every place a URL is shown or recorded."""
    return re.sub(r"(?<=://)([^:/@]*):[^@/]*@", r"\1:***@", url)


def check_storage_url(url: str) -> None:
    """Refuse a malformed URL, or a file in a directory that does not exist, before anything is created."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if is_journal(url):
        _check_directory(url, url)
        return
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(
            f"storage URL {mask_password(url)!r} is malformed (expected a file ending in {JOURNAL_SUFFIX}, e.g. "
            f"lrsearch{JOURNAL_SUFFIX}, or a database URL, e.g. sqlite:///lrsearch.db or "
            "postgresql+psycopg://user:password@host/db)"
        ) from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql", "mysql"):
        raise StorageError(
            f"storage URL {mask_password(url)!r}: backend {parsed.get_backend_name()!r} is not supported "
            "(allowed: sqlite, postgresql, mysql)"
        )
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        _check_directory(url, parsed.database)


def _check_directory(url: str, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StorageError(f"storage URL {mask_password(url)!r}: directory {directory!r} does not exist")


def quiet_optuna() -> None:
    """Optuna's info logs and experimental-feature warnings are noise to users: lrsearch reports on its own.
    ``lrsearch --debug`` (``LRSEARCH_DEBUG=1``) keeps them."""
    import optuna

    if os.environ.get("LRSEARCH_DEBUG") != "1":
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_storage(url: str, *, create: bool = True) -> optuna.storages.BaseStorage:
    """The storage ``url`` names: a journal file, or Optuna's RDB storage with heartbeats; either way trials whose
    process died are failed and retried (see :func:`lrsearch.study.heartbeat.fail_stale_trials`).

    With ``create=False`` a journal or SQLite file that does not exist is not created (``show``/``export`` of a
    typo).

    Raises:
        StorageError: a malformed URL, or a storage that cannot be opened.
        StudyNotFoundError: ``create=False`` and the file does not exist.
    """
    quiet_optuna()
    check_storage_url(url)
    if is_journal(url):
        return _open_journal(url, create)
    return _open_rdb(url, create)


def _open_journal(path: str, create: bool) -> optuna.storages.BaseStorage:
    from optuna.storages.journal import JournalStorage

    from lrsearch.study.journal import JournalFile

    if not create and not os.path.exists(path):
        raise StudyNotFoundError(f"no studies: storage {path!r} does not exist")
    try:
        return JournalStorage(JournalFile(path))
    except (OSError, ValueError) as exc:  # unreadable, not a journal (a line that is not JSON)
        raise StorageError(f"cannot open storage {path!r}: {first_line(exc)}") from None


def _open_rdb(url: str, create: bool) -> optuna.storages.RDBStorage:
    import optuna
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if not create and parsed.get_backend_name() == "sqlite" and parsed.database:
        if not os.path.exists(parsed.database):
            raise StudyNotFoundError(f"no studies: storage {mask_password(url)!r} does not exist")
    engine_kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        # Several workers write one SQLite file: wait for the lock rather than fail with "database is locked".
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    # Optuna 4.9 renamed failed_trial_callback; take whichever this Optuna has.
    accepted = inspect.signature(optuna.storages.RDBStorage).parameters
    callback_arg = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in accepted else \
        "failed_trial_callback"
    retry = retry_stale_trial()
    for attempt in range(_SCHEMA_RETRIES):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=HEARTBEAT_INTERVAL,
                    grace_period=GRACE_PERIOD,
                    **{callback_arg: retry},
                )
            break
        except Exception as exc:  # SQLAlchemy's connection errors differ by driver: report any in one line
            # Several machines (or workers) opening an empty database at once race to create Optuna's tables:
            # the losers see "already exists" / a duplicate catalog key; a moment later the tables are there.
            racing = any(s in str(exc).lower() for s in ("already exists", "duplicate key", "locked"))
            if not racing or attempt == _SCHEMA_RETRIES - 1:
                raise StorageError(f"cannot open storage {mask_password(url)!r}: {first_line(exc)}") from None
            time.sleep(0.2 * (attempt + 1) * (1 + random.random()))
    if parsed.get_backend_name() == "sqlite":
        _sqlite_sessions(storage.engine)
    return storage


def retry_stale_trial() -> Any:
    """Optuna's callback that queues the parameters of a trial failed as stale for a retry, at most
    :data:`MAX_RETRY` times (``RetryHeartbeatStaleTrialCallback``, ``RetryFailedTrialCallback`` before 4.9)."""
    import optuna

    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or \
        optuna.storages.RetryFailedTrialCallback
    return retry(max_retry=MAX_RETRY)


def _sqlite_sessions(engine: Any) -> None:
    """SQLite sessions that several processes can share.

    Each session is one ``BEGIN IMMEDIATE`` transaction: it holds the write lock from its first read to its commit.
    Optuna claims a queued trial by reading it WAITING and then writing RUNNING, relying on ``SELECT ... FOR UPDATE``,
    which SQLite ignores; and pysqlite runs the read outside any transaction. Without this, two workers could claim the
    same queued trial and train it twice, and the second one's result is refused (the trial has already finished).

    WAL mode with synchronous=NORMAL: readers outside lrsearch (a backup, ``sqlite3``) never block the writer, and a
    commit (Optuna commits every report) no longer waits for an fsync. This is safe against process crashes; a power
    cut may lose the last commits, but never corrupts the file."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(connection: Any, _: Any) -> None:
        connection.isolation_level = None  # pysqlite emits no BEGIN of its own; _begin below does
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # pooled connections opened before the listeners get replaced by ones with them


def create_study(spec: StudySpec, storage: optuna.storages.BaseStorage, name: str, queue: bool = True,
                 warm_start: dict[str, dict[str, Any]] | None = None) -> optuna.Study:
    """Create the study, or load it to resume; the study file is kept in its user attrs, and so are the warm-start
    configurations (``warm_start``, by label) of a new study. With ``queue``, a study that runs fixed
    configurations first (the textbook portfolio, a warm start) gets those queued that its budget has room for and
    no trial ran yet (:func:`~lrsearch.study.prior_search.enqueue_portfolio`)."""
    import optuna

    from lrsearch.config.priors import RelativeSpace
    from lrsearch.study.prior_search import WARM_ATTR, PriorSampler, enqueue_portfolio

    space = spec.space()
    plan = spec.confirmation
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction=spec.objective.direction,
        sampler=make_sampler(spec.sampler.name, spec.sampler.seed, space, spec.search.grid_points,
                             spec.sampler.options()),
        pruner=make_pruner(spec.pruner.name, spec.budget.epochs, spec.budget.n_trials,
                           plan.configs * plan.seeds if plan else 0, spec.pruner.options()),
        load_if_exists=True,
    )
    if "spec" not in study.user_attrs:
        study.set_user_attr("spec", spec.model_dump(mode="json"))
        if warm_start:
            study.set_user_attr(WARM_ATTR, warm_start)
    warm = study.user_attrs.get(WARM_ATTR, {})
    if warm and isinstance(study.sampler, PriorSampler):  # the prior is centred on them
        study.sampler.centres = [RelativeSpace(space).encode(config) for config in warm.values()]
    if queue:
        enqueue_portfolio(study, spec)
    return study


def load_study(name: str, storage_url_: str, storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """An existing study (on ``storage``, else on the storage ``storage_url_`` opens), or
    :class:`StudyNotFoundError` naming the studies that do exist."""
    import optuna

    storage = storage or open_storage(storage_url_, create=False)
    names = optuna.get_all_study_names(storage)
    if name not in names:
        known = ", ".join(names) if names else "none"
        raise StudyNotFoundError(f"study {name!r} not found in {mask_password(storage_url_)} (studies: {known})")
    return optuna.load_study(study_name=name, storage=storage)


def count_trials(study: optuna.Study, states: tuple[str, ...] = _SUFFICIENT_STATES) -> int:
    import optuna

    wanted = tuple(getattr(optuna.trial.TrialState, s) for s in states)
    return len(study.get_trials(deepcopy=False, states=wanted))
