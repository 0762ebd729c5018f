"""What lrsearch costs on top of training: one digits trial through lrsearch (its default local storage, a journal
file, + MLflow tracking on) vs a bare hand-written PyTorch loop with the same model, data, optimizer, epochs and
seed, and vs that loop wrapped the way an Optuna + MLflow user writes it by hand (trial.report and
mlflow.log_metrics each epoch). lrsearch on SQLite in WAL mode (the storage it defaulted to before) runs beside it.

Every trial trains the same fixed configuration (Adam, fused as lrsearch picks it on CPU, no pruning), so the
variants differ only in what surrounds the loop. The floor under any Optuna-backed search is measured the same way:
the bare loop by hand in ``study.optimize`` on each storage with the same results recorded, with and without a
``trial.report`` every epoch; and lrsearch on Optuna's in-memory storage shows its own code without the storage.
Also: the default study (its halving pruner) with the pruner asked at its rungs only, as lrsearch does, vs at every
epoch.
All are interleaved round by round and the per-trial medians compared. One-time costs (creating the study,
starting the tracking process) are reported apart: they are paid once per ``tune``, not per trial.

    python bench/overhead.py [--quick]

Target: lrsearch <= 1.15x bare (issue 14).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import STUDIES_DIR, machine_info, median, print_machine, print_table, verdict, write_results

TARGET = 1.15
CONFIG = {"optimizer": "adam", "params": {"lr": 3e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                                          "weight_decay": 0.0}, "schedule": {"name": "constant"}}
EPOCHS, BATCH, SEED = 20, 64, 0
STORAGES = {"journal": "{tmp}/{name}.journal", "SQLite WAL": "sqlite:///{tmp}/{name}.db"}
"""The two local storages lrsearch opens, as URLs in a directory ``tmp`` for a study file ``name``."""
FLOOR_REPORT = "Optuna by hand, {storage}: report every epoch"
FLOOR_ASK_TELL = "Optuna by hand, {storage}: no reports"
SQLITE_ROW = "lrsearch on SQLite WAL"


class Clock:
    """Wall seconds and this process's CPU seconds since it was made. The CPU counts every thread (the heartbeat's
    too) and no child process (the MLflow tracking process, which has a core of its own on a quiet machine); on a
    busy machine it is the steadier of the two."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def per(self, count: int) -> tuple[float, float]:
        """(wall, CPU) seconds per one of ``count`` trials."""
        return (time.perf_counter() - self.wall) / count, (time.process_time() - self.cpu) / count


def bare_trial(task, data, on_epoch=None) -> float:
    """The loop a user writes by hand: same seed, same shuffles, same fused Adam. ``on_epoch(epoch, metrics)`` is
    where the hand-wrapped variant reports to Optuna and MLflow."""
    import torch

    torch.manual_seed(SEED)
    model = task.model()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, fused=True)
    n = len(data.train_x)
    val_loss = math.nan
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(SEED * 1_000_003 + epoch))
        total = torch.zeros(())
        for start in range(0, n, BATCH):
            index = order[start : start + BATCH]
            loss = task.loss(model(data.train_x[index]), data.train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(index)
        model.eval()
        with torch.no_grad():
            output = model(data.val_x)
            val_loss = task.loss(output, data.val_y).item()
            accuracy = task.metrics["accuracy"](output, data.val_y)
        if on_epoch is not None:
            on_epoch(epoch, {"train_loss": total.item() / n, "val_loss": val_loss, "val_accuracy": accuracy})
    return val_loss


def handwritten_optuna_mlflow(task, data, trials: int, tmp: Path) -> tuple[float, float]:
    """What an Optuna + MLflow user writes: a nested mlflow run per trial, synchronous per-epoch logging."""
    import mlflow
    import optuna

    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'hand_mlflow.db'}")
    mlflow.set_experiment("hand")
    study = optuna.create_study(storage=f"sqlite:///{tmp / 'hand.db'}", study_name="hand", load_if_exists=True)

    def objective(trial: optuna.Trial) -> float:
        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            mlflow.log_metrics(metrics, step=epoch)
            trial.report(metrics["val_loss"], epoch)

        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
            mlflow.log_params({"optimizer": "adam", "lr": 3e-3})
            return bare_trial(task, data, on_epoch)

    with mlflow.start_run(run_name="study"):
        clock = Clock()
        study.optimize(objective, n_trials=trials)
        return clock.per(trials)


def handwritten_optuna(task, data, trials: int, tmp: Path, report: bool, storage: str) -> tuple[float, float]:
    """The floor under any Optuna-backed search of this trial: the bare loop in ``study.optimize`` on ``storage``
    (as lrsearch opens it, heartbeat on for SQLite), sampling the 2 choices lrsearch samples here (optimizer,
    schedule) and recording the 7 results lrsearch keeps (config, training settings, implementation, diverged,
    3 metrics); with ``report``, ``trial.report`` of the objective every epoch, which pruning needs."""
    import optuna

    from lrsearch.study.storage import open_storage

    name = "optuna-report" if report else "optuna-ask-tell"
    study = optuna.create_study(storage=open_storage(STORAGES[storage].format(tmp=tmp, name=name)), study_name=name,
                                load_if_exists=True)

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_categorical("optimizer", ["adam"])
        trial.suggest_categorical("schedule", ["constant"])
        value = bare_trial(task, data, (lambda epoch, metrics: trial.report(metrics["val_loss"], epoch))
                           if report else None)
        for attr in ("config", "training", "optimizer_impl", "diverged", "train_loss", "val_loss", "val_accuracy"):
            trial.set_user_attr(attr, 0.5)
        return value

    clock = Clock()
    study.optimize(objective, n_trials=trials)
    return clock.per(trials)


def lrsearch_trials(spec, prepared, trials: int, tmp: Path, round_: int, tracking: bool = True,
                    storage: str | None = "journal") -> tuple[tuple[float, float], float]:
    """Per-trial (wall, CPU) seconds inside lrsearch's study loop (tracking on or off; on one of its local
    ``STORAGES``, or with ``None`` on Optuna's in-memory storage to see lrsearch's own code without the storage), and
    the one-time setup seconds."""
    import optuna

    from lrsearch.config.overrides import Overrides
    from lrsearch.study.loop import run_study
    from lrsearch.study.storage import create_study, open_storage
    from lrsearch.tracking.tracker import MlflowTracker

    # The same study with a bigger budget each round; a fresh in-memory one each round.
    spec = Overrides(n_trials=trials * (1 if storage is None else round_ + 1)).apply(spec)
    prepared.spec = spec
    name = "overhead" if tracking else "overhead-untracked"
    setup = time.perf_counter()
    url = STORAGES[storage].format(tmp=tmp, name="lrsearch") if storage else ""
    opened = open_storage(url) if storage else optuna.storages.InMemoryStorage()
    study = create_study(spec, opened, name)
    observers = [MlflowTracker(f"sqlite:///{tmp / 'mlflow.db'}", None, url)] if tracking else []
    for observer in observers:
        observer.study_started(study, spec)
    setup = time.perf_counter() - setup
    clock = Clock()
    run_study(study, opened, prepared, observers)
    per_trial = clock.per(trials)
    for observer in observers:
        observer.study_ended(study, None)
    assert all(bool(t.user_attrs.get("mlflow_run_id")) == tracking for t in study.trials)
    return per_trial, setup


def default_study_seconds(tmp: Path, every_epoch: bool, round_: int, trials: int, threads: int) -> tuple[float, list]:
    """Wall seconds per trial of the default study (``studies/digits-mlp.yaml``: the prior sampler, the halving
    pruner, 20 epochs) run through ``lrsearch.tune`` with tracking off, asking the pruner at its rungs only (lrsearch's
    ``PruningPoints``) or at every epoch (what a hand-written Optuna loop does); and what the trials were, to
    check that both ran the same trials with the same decisions."""
    import yaml

    from lrsearch.study.algorithms import PruningPoints
    from lrsearch.study.tune import tune

    data = yaml.safe_load((STUDIES_DIR / "digits-mlp.yaml").read_text())
    data["budget"]["n_trials"] = trials
    data["train"]["device"] = "cpu"
    data["train"]["threads"] = threads
    due = PruningPoints.due
    if every_epoch:
        PruningPoints.due = lambda self, trial_number, step: True
    try:
        study = tune(data, storage=str(tmp / f"default-{every_epoch}-{round_}.journal"))
    finally:
        PruningPoints.due = due
    # From the first trial's start to the last one's end: the study's set-up (data, storage) is not in it.
    seconds = (study.trials[-1].datetime_complete - study.trials[0].datetime_start).total_seconds() / trials
    return seconds, [(t.state.name, t.value, len(t.intermediate_values)) for t in study.trials]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 3 trials instead of 5 rounds of 6")
    args = parser.parse_args()
    rounds, trials = (3, 3) if args.quick else (5, 6)

    from lrsearch.config.spec import spec_from_dict
    from lrsearch.training.prepared import prepare
    from lrsearch.training.threads import configure_threads

    spec = spec_from_dict({
        "name": "overhead", "task": "digits-mlp", "budget": {"n_trials": trials, "epochs": EPOCHS},
        "train": {"batch_size": BATCH, "device": "cpu", "seed": SEED},
        "search": {"optimizers": ["adam"], "adam": {k: v for k, v in CONFIG["params"].items()}},
        "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"},
    })
    prepared = prepare(spec)
    threads = configure_threads(None, prepared=prepared)  # the same thread count for all three
    info = machine_info(threads)
    print_machine(info)
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    setups: list[float] = []
    default: dict[str, list[float]] = {"rungs": [], "every epoch": []}
    default_trials = 12 if args.quick else 40
    with tempfile.TemporaryDirectory() as tmp:
        bare_trial(prepared.task, prepared.data)  # warm-up: first-call allocations and kernel selection
        for round_ in range(rounds):
            for name, (wall, process) in one_round(spec, prepared, trials, Path(tmp), round_, setups).items():
                times.setdefault(name, []).append(wall)
                cpu.setdefault(name, []).append(process)
            print(f"round {round_ + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()),
                  flush=True)
        for round_ in range(2 if args.quick else 3):
            at_rungs, same = default_study_seconds(Path(tmp), False, round_, default_trials, threads)
            every, other = default_study_seconds(Path(tmp), True, round_, default_trials, threads)
            assert same == other, "asking at rungs only must not change a single decision"
            default["rungs"].append(at_rungs)
            default["every epoch"].append(every)
            print(f"default study round {round_ + 1}: pruner asked at rungs {at_rungs:.3f} s/trial, every epoch "
                  f"{every:.3f} s/trial", flush=True)
    bare = median(times["bare"])
    rows = [[name, median(values), min(values), median(values) / bare, median(cpu[name]),
             median(cpu[name]) / median(cpu["bare"])] for name, values in times.items()]
    ratio = median(times["lrsearch"]) / bare
    limit = median(times[FLOOR_REPORT.format(storage="journal")]) / bare
    met = ratio <= TARGET
    write_results("overhead", {"machine": info, "rounds": rounds, "trials_per_round": trials, "epochs": EPOCHS,
                               "tracking_ratio": median(times["lrsearch"]) / median(times["lrsearch --no-mlflow"]),
                               "floor_ratio": limit, "sqlite_ratio": median(times[SQLITE_ROW]) / bare,
                               "default_study_seconds_per_trial": default,
                               "seconds_per_trial": times, "cpu_seconds_per_trial": cpu,
                               "cpu_ratio": median(cpu["lrsearch"]) / median(cpu["bare"]),
                               "lrsearch_setup_seconds": setups, "ratio": ratio,
                               "target": TARGET, "met": met})
    print_table(["per digits trial", "median s", "min s", "x bare", "cpu s", "cpu x bare"], rows,
                f"headline: lrsearch / bare = {ratio:.3f}x per trial on its default storage, a journal file "
                f"(target <= {TARGET}x): {verdict(met, machine_limited=limit > TARGET)}",
                [*notes(times, setups, default, default_trials),
                 f"CPU of this process per trial (the tracking process apart): lrsearch / bare = "
                 f"{median(cpu['lrsearch']) / median(cpu['bare']):.3f}x, on SQLite WAL "
                 f"{median(cpu[SQLITE_ROW]) / median(cpu['bare']):.3f}x"])
    return 0 if met else 1


def one_round(spec, prepared, trials: int, tmp: Path, round_: int,
              setups: list[float]) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds per trial of every variant, one after the other (the same order every round)."""
    task, data = prepared.task, prepared.data
    clock = Clock()
    for _ in range(trials):
        bare_trial(task, data)
    seconds = {"bare": clock.per(trials)}
    seconds["lrsearch"], setup = lrsearch_trials(spec, prepared, trials, tmp, round_)
    setups.append(setup)
    seconds[SQLITE_ROW] = lrsearch_trials(spec, prepared, trials, tmp, round_, storage="SQLite WAL")[0]
    seconds["lrsearch --no-mlflow"] = lrsearch_trials(spec, prepared, trials, tmp, round_, False)[0]
    seconds["lrsearch --no-mlflow, in-memory storage"] = lrsearch_trials(spec, prepared, trials, tmp, round_, False,
                                                                         storage=None)[0]
    seconds["handwritten"] = handwritten_optuna_mlflow(task, data, trials, tmp)
    for storage in STORAGES:
        seconds[FLOOR_REPORT.format(storage=storage)] = handwritten_optuna(task, data, trials, tmp, True, storage)
        seconds[FLOOR_ASK_TELL.format(storage=storage)] = handwritten_optuna(task, data, trials, tmp, False, storage)
    return seconds


def notes(times: dict[str, list[float]], setups: list[float], default: dict[str, list[float]],
          default_trials: int) -> list[str]:
    """What the table means: where the time goes, storage by storage."""
    bare = median(times["bare"])
    epoch = bare / EPOCHS
    lines = [f"one-time per tune: study + MLflow parent run and tracking process {median(setups):.2f} s "
             f"(median over {len(setups)} rounds)",
             f"MLflow tracking on / off: {median(times['lrsearch']) / median(times['lrsearch --no-mlflow']):.3f}x; "
             f"lrsearch on SQLite WAL / on a journal: {median(times[SQLITE_ROW]) / median(times['lrsearch']):.2f}x"]
    for storage in STORAGES:
        report, ask_tell = (median(times[row.format(storage=storage)]) for row in (FLOOR_REPORT, FLOOR_ASK_TELL))
        per_report = (report - ask_tell) / EPOCHS
        lines.append(f"the floor on {storage}: the same loop by hand in Optuna, reporting every epoch (as pruning "
                     f"needs) and keeping the same results, is {report / bare:.3f}x bare; with no per-epoch reports "
                     f"{ask_tell / bare:.3f}x; one trial.report {per_report * 1000:.2f} ms against a "
                     f"{epoch * 1000:.1f} ms epoch")
    added = median(times["lrsearch --no-mlflow"]) - median(times[FLOOR_REPORT.format(storage="journal")])
    lines += [f"lrsearch --no-mlflow adds {added * 1000:.1f} ms to the journal floor; on Optuna's in-memory storage "
              f"it is "
              f"{median(times['lrsearch --no-mlflow, in-memory storage']) / bare:.3f}x bare",
              f"the default study ({default_trials} trials, halving): asking the pruner at its rungs only, "
              f"{median(default['rungs']):.3f} s/trial, vs at every epoch, {median(default['every epoch']):.3f} "
              f"s/trial ({median(default['every epoch']) / median(default['rungs']):.2f}x), same decisions"]
    return lines


if __name__ == "__main__":
    sys.exit(main())
