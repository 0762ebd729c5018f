"""What lrsearch costs on top of training: one digits trial through lrsearch (Optuna SQLite storage + MLflow
tracking on) vs a bare hand-written PyTorch loop with the same model, data, optimizer, epochs and seed, and vs that
loop wrapped the way an Optuna + MLflow user writes it by hand (trial.report and mlflow.log_metrics each epoch).

Every trial trains the same fixed configuration (Adam, fused as lrsearch picks it on CPU, no pruning), so the
three differ only in what surrounds the loop. The three are interleaved round by round and the per-trial medians
compared. One-time costs (creating the study, starting the tracking process) are reported apart: they are paid
once per ``tune``, not per trial.

    python bench/overhead.py [--quick]

Target: lrsearch <= 1.03x bare.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, median, print_machine, print_table, verdict, write_results

TARGET = 1.03
CONFIG = {"optimizer": "adam", "params": {"lr": 3e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                                          "weight_decay": 0.0}, "schedule": {"name": "constant"}}
EPOCHS, BATCH, SEED = 20, 64, 0


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


def handwritten_optuna_mlflow(task, data, trials: int, tmp: Path) -> float:
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
        started = time.perf_counter()
        study.optimize(objective, n_trials=trials)
        return (time.perf_counter() - started) / trials


def optuna_bookkeeping(trials: int, tmp: Path) -> float:
    """Per-trial seconds of what any Optuna-backed search with per-epoch pruning writes to its SQLite storage,
    with no training at all: create the trial, sample 5 parameters, report + should_prune every epoch, record 7
    user attributes, finish. This is the floor under lrsearch's overhead for this storage."""
    import optuna

    from lrsearch.studies import open_storage

    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp / 'floor.db'}"), study_name="floor",
                                pruner=optuna.pruners.MedianPruner(), load_if_exists=True)

    def objective(trial: optuna.Trial) -> float:
        for name in ("lr", "one_minus_beta1", "one_minus_beta2", "eps", "weight_decay"):
            trial.suggest_float(name, 1e-6, 1e-1, log=True)
        for epoch in range(EPOCHS):
            trial.report(1.0 / (epoch + 1), epoch)
            trial.should_prune()
        for name in ("config", "training", "optimizer_impl", "diverged", "train_loss", "val_loss", "val_accuracy"):
            trial.set_user_attr(name, 0.5)
        return 0.5

    started = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    return (time.perf_counter() - started) / trials


def lrsearch_trials(spec, prepared, trials: int, tmp: Path, round_: int, tracking: bool = True) -> tuple[float, float]:
    """Per-trial seconds inside lrsearch's study loop (tracking on or off), and the one-time setup seconds."""
    from lrsearch.studies import create_study, open_storage
    from lrsearch.tracking import MlflowTracker
    from lrsearch.tuning import Overrides, run_study

    spec = Overrides(n_trials=trials * (round_ + 1)).apply(spec)  # the same study, a bigger budget each round
    prepared.spec = spec
    name = "overhead" if tracking else "overhead-untracked"
    setup = time.perf_counter()
    study = create_study(spec, open_storage(f"sqlite:///{tmp / 'lrsearch.db'}"), name)
    observers = [MlflowTracker(f"sqlite:///{tmp / 'mlflow.db'}", storage_url=f"sqlite:///{tmp / 'lrsearch.db'}")]
    observers = observers if tracking else []
    for observer in observers:
        observer.study_started(study, spec)
    setup = time.perf_counter() - setup
    started = time.perf_counter()
    run_study(study, prepared, observers)
    per_trial = (time.perf_counter() - started) / trials
    for observer in observers:
        observer.study_ended(study, None)
    assert all(bool(t.user_attrs.get("mlflow_run_id")) == tracking for t in study.trials)
    return per_trial, setup


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 3 trials instead of 5 rounds of 6")
    args = parser.parse_args()
    rounds, trials = (3, 3) if args.quick else (5, 6)

    from lrsearch.spec import spec_from_dict
    from lrsearch.tuning import configure_threads, prepare

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
    times: dict[str, list[float]] = {"bare": [], "lrsearch": [], "lrsearch --no-mlflow": [], "handwritten": []}
    setups: list[float] = []
    floor: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        bare_trial(prepared.task, prepared.data)  # warm-up: first-call allocations and kernel selection
        for round_ in range(rounds):
            started = time.perf_counter()
            for _ in range(trials):
                bare_trial(prepared.task, prepared.data)
            times["bare"].append((time.perf_counter() - started) / trials)
            per_trial, setup = lrsearch_trials(spec, prepared, trials, Path(tmp), round_)
            times["lrsearch"].append(per_trial)
            setups.append(setup)
            times["lrsearch --no-mlflow"].append(lrsearch_trials(spec, prepared, trials, Path(tmp), round_, False)[0])
            times["handwritten"].append(handwritten_optuna_mlflow(prepared.task, prepared.data, trials, Path(tmp)))
            floor.append(optuna_bookkeeping(trials, Path(tmp)))
            print(f"round {round_ + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()),
                  flush=True)
    bare = median(times["bare"])
    rows = [[name, median(values), min(values), median(values) / bare] for name, values in times.items()]
    ratio = median(times["lrsearch"]) / bare
    met = ratio <= TARGET
    tracking_ratio = median(times["lrsearch"]) / median(times["lrsearch --no-mlflow"])
    write_results("overhead", {"machine": info, "rounds": rounds, "trials_per_round": trials, "epochs": EPOCHS,
                               "tracking_ratio": tracking_ratio, "optuna_floor_seconds": floor,
                               "seconds_per_trial": times, "lrsearch_setup_seconds": setups, "ratio": ratio,
                               "target": TARGET, "met": met})
    print_table(["per digits trial", "median s", "min s", "x bare"], rows,
                f"headline: lrsearch / bare = {ratio:.3f}x per trial (target <= {TARGET}x): {verdict(met)}",
                [f"one-time per tune: study + MLflow parent run and tracking process {median(setups):.2f} s "
                 f"(median over {rounds} rounds)",
                 f"MLflow tracking on / off: {median(times['lrsearch']) / median(times['lrsearch --no-mlflow']):.3f}x",
                 f"Optuna's own per-trial storage work (no training; {EPOCHS} report + should_prune, 7 user attrs): "
                 f"{median(floor) * 1000:.0f} ms = {median(floor) / bare:.2f} of a bare trial; lrsearch adds "
                 f"{(median(times['lrsearch']) - bare) * 1000:.0f} ms in all. The target needs epochs long enough "
                 "that this per-epoch round trip is small against them."])
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
