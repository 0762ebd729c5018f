"""``tune --workers N|auto``: N processes on this machine share one study through its storage; on CUDA each sees
only GPUs of its own (``auto``: one worker per visible GPU, or per ``--nproc-per-trial`` GPUs).

Each worker is an ordinary ``lrsearch tune`` process with its own study loop against the shared storage (Optuna's
own model of parallelism: no scheduler of ours) and its share of the cores. This process prepares everything once
before they start — the checks, the study, the LR range test if asked for, the MLflow parent run — then watches
them until they exit, and closes the parent run with the best configuration and plots when they are done. The
same command on several machines against one PostgreSQL storage and one MLflow server scales further.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lrsearch.config.overrides import Overrides, resolve_spec
from lrsearch.distributed.processes import stop_processes
from lrsearch.errors import Interrupted, TrialRuntimeError, UsageError
from lrsearch.study.observers import Observers
from lrsearch.study.storage import storage_url
from lrsearch.study.tune import narrow_lr_ranges

if TYPE_CHECKING:
    import optuna

    from lrsearch.study.observers import TuneObserver
    from lrsearch.training.prepared import Prepared

POLL_SECONDS = 1.0
STOP_GRACE = 30.0
"""Seconds workers get to fail their running trial and close their runs after Ctrl-C, before they are killed."""


def worker_gpus(study_file: str | Path, overrides: Overrides, workers: int | str) -> list[list[str]]:
    """``--workers N|auto``: the GPUs each worker will see, one list per worker (empty lists on the CPU); see
    :func:`~lrsearch.training.devices.assign_gpus`.

    Raises:
        UsageError: a bad ``--workers``, a bad study, or more GPUs asked for than are visible.
    """
    from lrsearch.training.devices import assign_gpus, visible_gpus

    spec = resolve_spec(study_file, overrides)
    return assign_gpus(workers, spec.train.device, spec.train.nproc_per_trial, visible_gpus())


def tune_with_workers(
    study_file: str | Path,
    overrides: Overrides,
    worker_args: list[str],
    *,
    gpus: list[list[str]],
    storage: str | None,
    study_name: str | None,
    tracker: TuneObserver | None,
    on_poll: Callable[[optuna.Study, int, int], None] | None = None,
) -> tuple[optuna.Study, bool]:
    """Run the study with one process per entry of ``gpus``; returns the study and whether any trial ran.

    Args:
        worker_args: The ``tune`` options every worker gets (the CLI's own, less ``--workers``).
        gpus: Per worker, the GPUs it sees (its ``CUDA_VISIBLE_DEVICES``), from :func:`worker_gpus`; an empty list
            leaves the worker this process's view (CPU training).
        tracker: Records the study in MLflow (its parent run); each worker records its own trials.
        on_poll: Called about once a second while the workers run, with the study, its budget and the number of
            workers.

    Raises:
        UsageError: a bad study, storage, task, or a rank count or batch size the workers could not run.
        TrialRuntimeError: a worker failed.
    """
    from lrsearch.study.tune import set_up_study

    spec = resolve_spec(study_file, overrides)
    if storage_url(storage).startswith("sqlite") and ":memory:" in storage_url(storage):
        raise UsageError("--workers needs a storage that several processes can share, not an in-memory SQLite")
    setup = set_up_study(spec, storage=storage, study_name=study_name)  # the checks each worker would fail alike
    study, url = setup.study, setup.url
    observers = Observers([tracker] if tracker is not None else [])
    if setup.finished:
        observers.study_finished(study, spec)
        return study, False
    narrow_lr_ranges(study, setup.prepared)  # before the workers start, so they all search the same space
    _release(setup.prepared)
    observers.study_started(study, spec)
    workers = len(gpus)
    command = [sys.executable, "-m", "lrsearch", "tune", str(study_file), *worker_args, "--storage", url,
               "--study-name", study.study_name, "--no-progress", "--worker-of", str(workers)]
    processes: list[subprocess.Popen] = []
    error: BaseException | None = None
    try:
        processes = [subprocess.Popen(command, env=worker_env(mine)) for mine in gpus]
        while any(p.poll() is None for p in processes):
            time.sleep(POLL_SECONDS)
            if on_poll is not None:
                on_poll(study, spec.budget.n_trials, workers)
        failed = [p.returncode for p in processes if p.returncode != 0]
        if failed:
            raise TrialRuntimeError(f"{len(failed)} of {workers} workers failed (exit codes {failed})")
    except BaseException as exc:
        error = exc
        # Pass our signal on (a worker acts on the first one it gets, so Ctrl-C reaching the whole process group
        # does no harm), wait for them to fail their running trials and close their runs, and kill what is left.
        signum = signal.SIGTERM if isinstance(exc, Interrupted) else signal.SIGINT
        stop_processes(processes, signum, grace=STOP_GRACE)
        raise
    finally:
        observers.study_ended(study, error)
    return study, True


def worker_env(gpus: list[str]) -> dict[str, str]:
    """A worker's environment: this one, with ``CUDA_VISIBLE_DEVICES`` naming only its own GPUs (if any)."""
    return {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(gpus)} if gpus else dict(os.environ)


def _release(prepared: Prepared) -> None:
    """The workers load their own data: drop this process's (its loader workers, its GPU memory) first."""
    device, prepared.data, prepared.task = prepared.device, None, None
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
