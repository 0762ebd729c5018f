"""``tune --workers N``: N processes on this machine share one study through its storage.

Each worker is an ordinary ``lrsearch tune`` process with its own Optuna loop against the shared storage (Optuna's
own model of parallelism: no scheduler of ours) and ``cores / N`` torch threads. This process prepares everything
once before they start — the study, the LR range test if asked for, the MLflow parent run — then shows their
progress from the storage, and closes the parent run with the best configuration and plots when they are done.
The same command on several machines against one PostgreSQL storage and one MLflow server scales further.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrsearch.errors import TrialRuntimeError, UsageError

if TYPE_CHECKING:
    import optuna
    from rich.console import Console

    from lrsearch.tracking import MlflowTracker
    from lrsearch.tuning import Overrides

POLL_SECONDS = 1.0
STOP_GRACE = 30.0
"""Seconds workers get to fail their running trial and close their runs after Ctrl-C, before they are killed."""


def tune_with_workers(
    study_file: str | Path,
    overrides: Overrides,
    worker_args: list[str],
    *,
    workers: int,
    storage: str | None,
    study_name: str | None,
    tracker: MlflowTracker | None,
    console: Console | None,
) -> tuple[optuna.Study, bool]:
    """Run the study with ``workers`` processes; returns the study and whether any trial ran.

    Args:
        worker_args: The ``tune`` options every worker gets (the CLI's own, less ``--workers``).
        console: Where to show progress, or None for none.
    """
    from lrsearch.studies import check_storage_url, count_trials, create_study, open_storage, storage_url
    from lrsearch.tuning import narrow_lr_ranges, prepare, resolve_spec

    if workers < 1:
        raise UsageError(f"--workers must be a positive integer (got {workers})")
    spec = resolve_spec(study_file, overrides)
    url = storage_url(storage)
    check_storage_url(url)
    if url.startswith("sqlite") and ":memory:" in url:
        raise UsageError("--workers needs a storage that several processes can share, not an in-memory SQLite")
    prepared = prepare(spec)
    study = create_study(spec, open_storage(url), study_name or spec.name)
    if count_trials(study) >= spec.budget.n_trials:
        return study, False
    narrow_lr_ranges(study, prepared)  # before the workers start, so they all search the same space
    if tracker is not None:
        tracker.study_started(study, spec)
    command = [sys.executable, "-m", "lrsearch", "tune", str(study_file), *worker_args, "--storage", url,
               "--study-name", study.study_name, "--no-progress", "--worker-of", str(workers)]
    processes: list[subprocess.Popen] = []
    error: BaseException | None = None
    try:
        processes = [subprocess.Popen(command) for _ in range(workers)]
        _watch(study, spec.budget.n_trials, processes, console)
        failed = [p.returncode for p in processes if p.returncode != 0]
        if failed:
            raise TrialRuntimeError(f"{len(failed)} of {workers} workers failed (exit codes {failed})")
    except BaseException as exc:
        from lrsearch.tuning import Interrupted

        error = exc
        _stop(processes, signal.SIGTERM if isinstance(exc, Interrupted) else signal.SIGINT)
        raise
    finally:
        if tracker is not None:
            tracker.study_ended(study, error)
    return study, True


def _watch(study: optuna.Study, budget: int, processes: list[subprocess.Popen], console: Console | None) -> None:
    """Show the study's progress from the storage until every worker has exited."""
    from lrsearch.report import top_trials
    from lrsearch.studies import count_trials

    progress = None
    if console is not None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console)
        progress.start()
        task = progress.add_task(f"study {study.study_name} ({len(processes)} workers)", total=budget)
    try:
        while any(p.poll() is None for p in processes):
            time.sleep(POLL_SECONDS)
            if progress is not None:
                best = top_trials(study, 1)
                suffix = f": best {best[0].value:.4g} (trial {best[0].number})" if best else ""
                progress.update(task, completed=count_trials(study),
                                description=f"study {study.study_name} ({len(processes)} workers){suffix}")
    finally:
        if progress is not None:
            progress.stop()


def _stop(processes: list[subprocess.Popen], signum: int) -> None:
    """Pass our signal on (a worker acts on the first one it gets, so Ctrl-C reaching the whole process group
    does no harm), wait for them to fail their running trials and close their runs, and kill what is left."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signum)
    deadline = time.monotonic() + STOP_GRACE
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def worker_threads(workers: int) -> int:
    """Torch threads of one of ``workers`` processes on this machine."""
    return max(1, (os.cpu_count() or 1) // workers)


def passthrough_args(params: dict[str, Any]) -> list[str]:
    """The ``tune`` options a worker repeats, rebuilt from the parsed CLI parameters."""
    flags = {"n_trials": "--n-trials", "epochs": "--epochs", "timeout": "--timeout", "sampler": "--sampler",
             "pruner": "--pruner", "seed": "--seed", "device": "--device", "nproc_per_trial": "--nproc-per-trial",
             "lr_range": "--lr-range", "batch_trials": "--batch-trials", "tracking_uri": "--tracking-uri",
             "experiment": "--experiment"}
    args: list[str] = []
    for name, flag in flags.items():
        if params.get(name) is not None:
            args += [flag, str(params[name])]
    if params.get("no_mlflow"):
        args.append("--no-mlflow")
    return args
