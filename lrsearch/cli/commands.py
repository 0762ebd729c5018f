"""The ``lrsearch`` command line. Heavy imports happen inside commands, so ``lrsearch --help`` is instant.

Errors reach the terminal as one line, ``error: ...``, with exit code 2 (usage, study file, unknown study) or 1
(runtime); ``lrsearch --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from typing import Any

import click

from lrsearch import __version__
from lrsearch.cli.options import (
    check_format,
    check_writable,
    format_option,
    stop_on_first_signal,
    storage_option,
    tracking_uri_option,
    write_text,
)
from lrsearch.cli.tracking import sync, ui
from lrsearch.errors import Interrupted, LrsearchError, one_line

EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class _Lrsearch(click.Group):
    """Runs a command and turns every error into one line on stderr and an exit code."""

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> None:  # type: ignore[override]
        args = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in args
        if debug:
            os.environ["LRSEARCH_DEBUG"] = "1"
            logging.basicConfig(format="%(name)s: %(message)s")
            logging.getLogger("lrsearch").setLevel(logging.DEBUG)  # failed trials with their tracebacks, and more
        else:  # MLflow's info lines ("Creating initial MLflow database tables") are not the user's business
            os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        extra.pop("standalone_mode", None)
        try:
            super().main(args=args, prog_name=prog_name or "lrsearch", standalone_mode=False, **extra)
        except LrsearchError as exc:
            _fail(str(exc), exc.exit_code, debug)
        except click.exceptions.Abort as exc:
            _interrupted(exc.__cause__, debug)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code, debug)
        except KeyboardInterrupt as exc:
            _interrupted(exc, debug)
        except Exception as exc:
            _fail(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)", 1, debug)
        sys.exit(0)


def _interrupted(exc: BaseException | None, debug: bool) -> None:
    terminated = isinstance(exc, Interrupted)
    _fail("terminated" if terminated else "interrupted", EXIT_SIGTERM if terminated else EXIT_SIGINT, debug)


@click.group(cls=_Lrsearch, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lrsearch")
@click.option("--debug", is_flag=True, help="Show tracebacks and Optuna's own logging.")
def cli(debug: bool) -> None:
    """Search optimizers, learning rates and betas for a PyTorch task with Optuna."""


@cli.command()
@click.argument("study_file", metavar="STUDY.yaml")
@click.option("--n-trials", type=int, help="Total trials of the study (complete + pruned).")
@click.option("--epochs", type=int, help="Epochs per trial.")
@click.option("--timeout", type=float, metavar="SEC", help="Stop starting trials after this many seconds.")
@storage_option
@click.option("--study-name", metavar="NAME", help="Default: the study file's name.")
@click.option("--sampler", metavar="NAME", help="prior | tpe | gp | cmaes | nsga2 | qmc | random | grid (default: the "
              "study file's sampler.name, else prior).")
@click.option("--pruner", metavar="NAME", help="halving | none | median | sha | hyperband | wilcoxon (default: the "
              "study file's pruner.name, else halving).")
@click.option("--seed", type=int, help="Training seed (and sampler seed unless the study file sets one).")
@click.option("--device", metavar="auto|cpu|cuda", help="Training device.")
@click.option("--nproc-per-trial", metavar="N|auto", default=None,
              help="DDP ranks per trial on this machine (gloo on CPU; NCCL, one GPU per rank; auto = visible GPUs).")
@click.option("--batch-trials", type=int, metavar="K", default=None,
              help="Train K trials at once as one stacked model (torch.func.vmap); one process per trial only.")
@click.option("--lr-range", metavar="auto|preset", default=None,
              help="auto: narrow each optimizer's lr interval with an LR range test before the first trial.")
@click.option("--warm-start", "warm_start", multiple=True, metavar="STUDY|FILE",
              help="Start from an earlier study of the same storage, or a file lrsearch export wrote: its best "
              "configuration runs first and the search centres on it (repeatable; adds to search.warm_start).")
@click.option("--no-progress", is_flag=True, help="No live progress display.")
@tracking_uri_option
@click.option("--experiment", metavar="NAME", help="MLflow experiment (default: the study file's mlflow.experiment, "
              "else the study name).")
@click.option("--no-mlflow", is_flag=True, help="Do not record the study in MLflow.")
@click.option("--workers", metavar="N|auto", default="1", show_default=True,
              help="Processes on this machine sharing the study, each with cores/N torch threads; on CUDA each "
              "sees only its own GPUs (auto: one worker per visible GPU, 1 on the CPU).")
@click.option("--worker-of", type=int, default=None, hidden=True)
def tune(study_file: str, n_trials: int | None, epochs: int | None, timeout: float | None, storage: str | None,
         study_name: str | None, sampler: str | None, pruner: str | None, seed: int | None, device: str | None,
         nproc_per_trial: str | None, batch_trials: int | None, lr_range: str | None, warm_start: tuple[str, ...],
         no_progress: bool,
         tracking_uri: str | None, experiment: str | None, no_mlflow: bool, workers: str,
         worker_of: int | None) -> None:
    """Run a study to its budget; rerun the same command to resume it."""
    from rich.console import Console

    from lrsearch.config.overrides import Overrides
    from lrsearch.training.devices import parse_workers

    stop_on_first_signal()
    count = parse_workers(workers)
    overrides = Overrides(n_trials=n_trials, epochs=epochs, timeout=timeout, sampler=sampler, pruner=pruner,
                          seed=seed, device=device, nproc_per_trial=nproc_per_trial, lr_range=lr_range,
                          batch_trials=batch_trials, warm_start=warm_start)
    gpus: list[list[str]] = [[]]
    if count != 1:
        from lrsearch.study.workers import worker_gpus

        gpus = worker_gpus(study_file, overrides, count)  # refused here, before anything is created
    rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports and tracks
    # A worker records its trials; the process that started the workers owns the study's parent run.
    tracker = None if no_mlflow or not rank0 else _tracker(tracking_uri, experiment, storage, worker_of is None)
    progress = not no_progress and rank0
    if len(gpus) > 1:
        study, ran = _tune_with_workers(study_file, overrides, gpus, storage, study_name, tracker, progress)
    else:
        from lrsearch.cli.report import ProgressDisplay
        from lrsearch.study.tune import run_tune

        observers: list[Any] = [ProgressDisplay(Console(stderr=True), enabled=progress)]
        observers += [tracker] if tracker is not None else []
        study, ran = run_tune(study_file, overrides, storage=storage, study_name=study_name, observers=observers,
                              workers=worker_of or 1, worker=worker_of is not None)
    if study is None or worker_of is not None:
        return  # a non-zero torchrun rank, or one of several workers: the process that started them reports
    console = Console()
    if not ran:
        console.print(f"study {study.study_name} is finished: its budget of trials is complete")
    _print_summary(console, study)


def _tracker(uri: str | None, experiment: str | None, storage: str | None, owns_parent: bool) -> Any:
    from lrsearch.study.storage import storage_url
    from lrsearch.tracking.tracker import MlflowTracker

    return MlflowTracker(uri, experiment, storage_url(storage), owns_parent=owns_parent)


def _tune_with_workers(study_file: str, overrides: Any, gpus: list[list[str]], storage: str | None,
                       study_name: str | None, tracker: Any, progress: bool) -> tuple[Any, bool]:
    from rich.console import Console

    from lrsearch.cli.report import WorkersProgress
    from lrsearch.study.workers import tune_with_workers

    args = worker_args(click.get_current_context().params)
    display = WorkersProgress(Console(stderr=True)) if progress else None
    try:
        return tune_with_workers(study_file, overrides, args, gpus=gpus, storage=storage,
                                 study_name=study_name, tracker=tracker, on_poll=display)
    finally:
        if display is not None:
            display.stop()


WORKER_FLAGS = {"n_trials": "--n-trials", "epochs": "--epochs", "timeout": "--timeout", "sampler": "--sampler",
                "pruner": "--pruner", "seed": "--seed", "device": "--device", "nproc_per_trial": "--nproc-per-trial",
                "lr_range": "--lr-range", "batch_trials": "--batch-trials", "tracking_uri": "--tracking-uri",
                "experiment": "--experiment"}
"""The ``tune`` options every worker repeats (the storage, study name and workers are given apart)."""


def worker_args(params: dict[str, Any]) -> list[str]:
    """The ``tune`` options a worker repeats, rebuilt from the parsed parameters of this ``tune``."""
    args: list[str] = []
    for name, flag in WORKER_FLAGS.items():
        if params.get(name) is not None:
            args += [flag, str(params[name])]
    if params.get("no_mlflow"):
        args.append("--no-mlflow")
    return args


def _print_summary(console: Any, study: Any) -> None:
    from lrsearch.cli.report import answer_lines, trials_table
    from lrsearch.study.confirmation import is_confirmation
    from lrsearch.study.results import top_trials

    best = [t for t in top_trials(study, 10) if not is_confirmation(t)][:5]
    console.print(trials_table(study, best, title=f"top trials of {study.study_name}"))
    try:
        lines = answer_lines(study)
    except LrsearchError as exc:
        console.print(str(exc))
        return
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


@cli.command()
@click.argument("study_file", metavar="STUDY.yaml")
def validate(study_file: str) -> None:
    """Check a study file: prints "ok", or every problem and exits 2."""
    from lrsearch.config.spec import load_spec
    from lrsearch.errors import SpecError

    try:
        load_spec(study_file)
    except SpecError as exc:
        click.echo(f"{len(exc.problems)} problem{'s' if len(exc.problems) > 1 else ''} in {exc.source}:")
        for problem in exc.problems:
            click.echo(f"  - {problem}")
        sys.exit(exc.exit_code)
    click.echo("ok")


@cli.command()
@click.argument("name")
@storage_option
@format_option
def show(name: str, storage: str | None, fmt: str) -> None:
    """Trials of a study: number, state, optimizer, params, value, diverged."""
    from rich.console import Console

    from lrsearch.cli.report import trials_table
    from lrsearch.study.results import study_json
    from lrsearch.study.storage import load_study, storage_url

    check_format(fmt, ("table", "json"))
    study = load_study(name, storage_url(storage))
    if fmt == "json":
        click.echo(json.dumps(study_json(study), indent=2))
    else:
        Console().print(trials_table(study))


@cli.command()
@storage_option
@format_option
def studies(storage: str | None, fmt: str) -> None:
    """Every study in the storage, with trial counts and best value."""
    from rich.console import Console

    from lrsearch.cli.report import studies_table
    from lrsearch.study.results import studies_rows
    from lrsearch.study.storage import storage_url

    check_format(fmt, ("table", "json"))
    rows = studies_rows(storage_url(storage))
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    else:
        Console().print(studies_table(rows))


@cli.command()
@click.argument("name")
@storage_option
@click.option("--format", "fmt", default="json", metavar="json|yaml|python", help="Output format.")
@click.option("--trial", "trial_number", type=int, help="Export this trial instead of the best one.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE instead of stdout.")
def export(name: str, storage: str | None, fmt: str, trial_number: int | None, output: str | None) -> None:
    """The best (or a chosen) trial's optimizer configuration, as JSON, YAML or torch code."""
    from lrsearch.errors import UsageError
    from lrsearch.study.results import best_trial
    from lrsearch.study.storage import load_study, storage_url
    from lrsearch.tracking.export import FORMATS, render, trial_config

    check_format(fmt, FORMATS)
    if output:
        check_writable(output, "-o")
    study = load_study(name, storage_url(storage))
    if trial_number is None:
        trial = best_trial(study)
    else:
        trials = [t for t in study.get_trials(deepcopy=False) if t.number == trial_number]
        if not trials:
            raise UsageError(f"--trial {trial_number}: study {name!r} has trials 0..{len(study.trials) - 1}")
        trial = trials[0]
    text = render(trial_config(study, trial), fmt)
    if output:
        write_text(output, text, "-o")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


@cli.command("lr-find")
@click.argument("study_file", metavar="STUDY.yaml")
@click.option("--optimizer", "optimizers", multiple=True, metavar="NAME",
              help="Optimizer to test; repeatable (default: the study's search.optimizers).")
@click.option("--start", type=float, default=1e-7, show_default=True, help="First lr.")
@click.option("--end", type=float, default=10.0, show_default=True, help="Last lr, unless the loss diverges first.")
@click.option("--steps", type=int, default=100, show_default=True, help="Mini-batches from --start to --end.")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False), metavar="FILE.png", help="Write the curves.")
@format_option
@tracking_uri_option
@click.option("--no-mlflow", is_flag=True, help="Do not record the range test in MLflow.")
def lr_find(study_file: str, optimizers: tuple[str, ...], start: float, end: float, steps: int,
            plot_file: str | None, fmt: str, tracking_uri: str | None, no_mlflow: bool) -> None:
    """LR range test (Smith 2017): per optimizer, a suggested lr and the interval tune --lr-range auto would search."""
    from rich.console import Console
    from rich.table import Table

    from lrsearch.config.overrides import resolve_spec
    from lrsearch.training.lr_finder import lr_find as range_test
    from lrsearch.training.lr_finder import narrowed_lr_ranges
    from lrsearch.training.prepared import prepare
    from lrsearch.training.threads import configure_threads

    check_format(fmt, ("table", "json"))
    if plot_file:
        check_writable(plot_file, "--plot")  # before the range test, not after it
    spec = resolve_spec(study_file)
    prepared = prepare(spec)
    configure_threads(spec.train.threads)
    results = range_test(prepared, list(optimizers) or None, start=start, end=end, steps=steps)
    ranges = narrowed_lr_ranges(results, spec.search.space())
    if plot_file:
        from lrsearch.tracking.plots import plot_lr_find

        plot_lr_find(results, plot_file)
        click.echo(f"wrote {plot_file}", err=True)
    if not no_mlflow:
        from lrsearch.tracking.recorder import log_lr_find
        from lrsearch.tracking.tracker import tracking_uri as resolve_uri

        settings = {"start": start, "end": end, "steps": steps}
        run_id = log_lr_find(resolve_uri(tracking_uri), spec, results, ranges, settings)
        click.echo(f"recorded in MLflow as run {run_id}", err=True)
    if fmt == "json":
        out = {name: {**r.to_json(), "search_range": list(ranges[name])} for name, r in results.items()}
        click.echo(json.dumps(out, indent=2, allow_nan=False))
        return
    table = Table(title=f"LR range test of {spec.name} ({steps} steps, {start:g} to {end:g})")
    for column in ("optimizer", "suggested lr", "rule", "min-loss lr", "diverged at", "search range"):
        table.add_column(column)
    for name, r in results.items():
        low, high = ranges[name]
        table.add_row(name, f"{r.suggested_lr:.3g}", r.rule, f"{r.min_loss_lr:.3g}",
                      "-" if r.diverged_at is None else f"{r.diverged_at:.3g}", f"{low:.2g}-{high:.2g}")
    Console().print(table)


cli.add_command(sync)
cli.add_command(ui)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lrsearch`` script and ``python -m lrsearch``."""
    cli.main(args=argv, prog_name="lrsearch")


def _fail(message: str, code: int, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    click.echo(f"error: {one_line(message)}", err=True)
    sys.exit(code)
