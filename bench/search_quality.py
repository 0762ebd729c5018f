"""Search quality: best val_loss of TPE with lrsearch's presets after 25 trials vs random search after 100.

For each task (``studies/digits-mlp.yaml``, ``studies/quadratic.yaml``) and each sampler seed, three studies run
through ``lrsearch.tune`` on the study file, changing only what is named here:

* ``tpe@25``: the study file's sampler (TPE, lrsearch's configuration) with ``search.param_names: per_optimizer``
  (the default), 25 trials;
* ``tpe-shared@25``: the same with ``search.param_names: shared`` (one Optuna ``lr`` for every optimizer);
* ``random@100``: ``sampler: random``, 100 trials (its best after its first 25 is reported too).

The sampler seed is set in the study dict (``sampler.seed``); ``train.seed`` stays the study file's, so every
configuration trains the same way in every study and only the sampler differs. Pruning is OFF by default
(``--pruner none``): a trial budget then means the same number of full trainings for every sampler, the best value
is over complete trials only, and the pruner's interplay with each sampler does not blur the comparison (pruning
is measured by ``bench/pruning.py``); ``--pruner study`` keeps the study file's pruner. Studies run in parallel
processes (one per core, one torch thread each) on a SQLite file in a temporary directory.

For the quadratic, the distance in decades, |log10(lr / optimal_lr)|, between the lr of the best SGD-or-momentum
trial and ``lrsearch.training.tasks.quadratic().info["optimal_lr"]`` (gradient descent's optimal step,
2/(lam_max+lam_min)) is reported, and for the best plain-SGD trial alone.

    python bench/search_quality.py [--quick] [--seeds 0 1 2] [--digits-epochs N] [--pruner none|study]

Target, per task: the median over seeds of TPE@25's best val_loss <= the median of random@100's (every-seed wins
are printed too). Headline: the worse task's ratio median(TPE@25) / median(random@100).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import _common

TASKS = {"digits-mlp": "digits-mlp.yaml", "quadratic": "quadratic.yaml"}
VARIANTS = {
    "tpe@25": {"sampler": "tpe", "n_trials": 25, "param_names": "per_optimizer"},
    "tpe-shared@25": {"sampler": "tpe", "n_trials": 25, "param_names": "shared"},
    "random@100": {"sampler": "random", "n_trials": 100, "param_names": "per_optimizer"},
}
SGD_LIKE = ("sgd", "momentum")


def study_dict(task: str, variant: str, seed: int, epochs: int | None, pruner: str) -> dict[str, Any]:
    """The study file as a dict, with this run's sampler, seed, budget, naming and pruner."""
    import yaml

    data = yaml.safe_load((_common.STUDIES_DIR / TASKS[task]).read_text())
    settings = VARIANTS[variant]
    data["name"] = f"{task}-{variant}-seed{seed}"
    data["sampler"] = {"name": settings["sampler"], "seed": seed}
    data["budget"]["n_trials"] = settings["n_trials"]
    if epochs is not None:
        data["budget"]["epochs"] = epochs
    data["search"]["param_names"] = settings["param_names"]
    data["train"]["threads"] = 1
    if pruner != "study":
        data["pruner"] = {"name": pruner}
    return data


def _trial_lr(trial: Any) -> float:
    return float(trial.user_attrs["config"]["params"]["lr"])


def run_job(task: str, variant: str, seed: int, epochs: int | None, pruner: str, workdir: str) -> dict[str, Any]:
    """One study, in a worker process; a summary of it."""
    import optuna

    from lrsearch.study.tune import tune
    from lrsearch.training.tasks import quadratic

    data = study_dict(task, variant, seed, epochs, pruner)
    storage = f"sqlite:///{Path(workdir) / (data['name'] + '.db')}"
    start = time.perf_counter()
    study = tune(data, storage=storage)
    wall = time.perf_counter() - start
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]

    def best_of_first(k: int) -> float:
        values = [t.value for t in complete if t.number < k and t.value is not None]
        return min(values) if values else math.inf

    summary: dict[str, Any] = {
        "task": task, "variant": variant, "seed": seed, "wall_s": wall,
        "epochs_per_trial": data["budget"]["epochs"], "pruner": data["pruner"]["name"],
        "n_trials": len(trials), "complete": len(complete),
        "pruned_or_diverged": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
        "epochs_run": sum(len(t.intermediate_values) for t in trials),
        "best": best_of_first(len(trials) + 1), "best_at_25": best_of_first(25),
        "best_config": min(complete, key=lambda t: t.value).user_attrs["config"] if complete else None,
        "optimizers_tried": sorted({t.user_attrs["config"]["optimizer"] for t in trials if "config" in t.user_attrs}),
    }
    if task == "quadratic":
        optimal = quadratic().info["optimal_lr"]
        summary["optimal_lr"] = optimal
        for key, names in (("sgd_or_momentum", SGD_LIKE), ("sgd", ("sgd",))):
            pool = [t for t in complete if t.user_attrs["config"]["optimizer"] in names]
            best = min(pool, key=lambda t: t.value) if pool else None
            summary[f"best_{key}_lr"] = _trial_lr(best) if best else math.nan
            summary[f"best_{key}_value"] = best.value if best else math.nan
            summary[f"lr_decades_off_{key}"] = abs(math.log10(_trial_lr(best) / optimal)) if best else math.nan
    return summary


def quadratic_val_minimum() -> float:
    """The smallest val_loss any model of the quadratic task can reach: theta at the mean of the val samples."""
    import torch

    from lrsearch.training.tasks import quadratic

    task = quadratic()
    x, y = task.val.tensors
    model = task.model()
    with torch.no_grad():
        model.theta.copy_(x.mean(dim=0))
        return float(task.loss(model(x), y))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, digits-mlp at 5 epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="sampler seeds (default 0 1 2)")
    parser.add_argument("--digits-epochs", type=int, default=None,
                        help="epochs per digits-mlp trial (default: the study file's, 20; --quick 5)")
    parser.add_argument("--quadratic-epochs", type=int, default=None, help="default: the study file's (10)")
    parser.add_argument("--pruner", default="none", help="'none' (default) or 'study' (the study file's pruner)")
    parser.add_argument("--workers", type=int, default=None, help="parallel studies (default: usable cores)")
    args = parser.parse_args(argv)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    digits_epochs = args.digits_epochs or (5 if args.quick else None)
    epochs = {"digits-mlp": digits_epochs, "quadratic": args.quadratic_epochs}
    workers = args.workers or _common.usable_cores()

    info = _common.machine_info(torch_threads=1)
    _common.print_machine(info)
    print(f"seeds {seeds}; digits-mlp {digits_epochs or 'study file (20)'} epochs/trial, quadratic "
          f"{args.quadratic_epochs or 'study file (10)'} epochs/trial; pruner {args.pruner}; {workers} parallel "
          "studies, 1 torch thread each")
    jobs = [(task, variant, seed) for task in TASKS for variant in VARIANTS for seed in seeds]
    # longest first: random@100 digits, then the rest
    jobs.sort(key=lambda j: VARIANTS[j[1]]["n_trials"] * (epochs[j[0]] or 20) * (2 if j[0] == "digits-mlp" else 1),
              reverse=True)
    started = time.perf_counter()
    summaries: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lrsearch-bench-", dir=_common.scratch_base()) as workdir, \
            ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_job, task, variant, seed, epochs[task], args.pruner, workdir)
                   for task, variant, seed in jobs]
        for future in futures:
            summary = future.result()
            summaries.append(summary)
            print(f"  {summary['task']:10s} {summary['variant']:13s} seed {summary['seed']}: best "
                  f"{summary['best']:.5g} ({summary['complete']}/{summary['n_trials']} complete, "
                  f"{summary['wall_s']:.0f} s)", flush=True)
    total_wall = time.perf_counter() - started

    def values(task: str, variant: str, key: str = "best") -> list[float]:
        return [next(s[key] for s in summaries if (s["task"], s["variant"], s["seed"]) == (task, variant, seed))
                for seed in seeds]

    rows, notes, verdicts, ratios = [], [], {}, {}
    for task in TASKS:
        for variant in VARIANTS:
            vals = values(task, variant)
            extra = ""
            if task == "quadratic":
                off = values(task, variant, "lr_decades_off_sgd_or_momentum")
                off_sgd = values(task, variant, "lr_decades_off_sgd")
                extra = f"{_common.median(off):.2f} ({_common.median(off_sgd):.2f})"
            rows.append([task, variant, *vals, _common.median(vals), extra])
            if variant == "random@100":
                at25 = values(task, variant, "best_at_25")
                rows.append([task, "(random@25)", *at25, _common.median(at25), ""])
        tpe, rnd = _common.median(values(task, "tpe@25")), _common.median(values(task, "random@100"))
        wins = sum(t <= r for t, r in zip(values(task, "tpe@25"), values(task, "random@100"), strict=True))
        ratios[task] = tpe / rnd
        verdicts[task] = tpe <= rnd
        notes.append(f"{task}: median TPE@25 {tpe:.5g} vs random@100 {rnd:.5g} (ratio {tpe / rnd:.4f}); TPE@25 "
                     f"<= random@100 on {wins}/{len(seeds)} seeds -> {'MET' if tpe <= rnd else 'MISSED'} "
                     "(criterion: median over seeds)")
        rnd25 = _common.median(values(task, "random@100", "best_at_25"))
        notes.append(f"{task}: TPE@25 / random@25 (the same budget) {tpe / rnd25:.4f}: what the sampler gains over "
                     "random search; meeting the target needs random@100's best in a quarter of its trials")
        shared, per = _common.median(values(task, "tpe-shared@25")), tpe
        better = "shared" if shared < per else "per_optimizer" if per < shared else "tie"
        shared_wins = sum(s < p for s, p in zip(values(task, "tpe-shared@25"), values(task, "tpe@25"), strict=True))
        notes.append(f"{task}: param_names shared {shared:.5g} vs per_optimizer {per:.5g} (median TPE@25): "
                     f"lower is {better}; shared better on {shared_wins}/{len(seeds)} seeds")
    floor = quadratic_val_minimum()
    excess = {v: _common.median([b - floor for b in values("quadratic", v)]) for v in VARIANTS}
    notes.append(f"quadratic: val_loss cannot go below {floor:.5g} (theta = mean of the val samples); excess over it, "
                 "median: " + ", ".join(f"{v} {e:.4g}" for v, e in excess.items())
                 + f"; TPE@25 / random@100 on the excess: {excess['tpe@25'] / excess['random@100']:.3f}")
    optimal = next((s["optimal_lr"] for s in summaries if s["task"] == "quadratic"), math.nan)
    notes.append(f"quadratic lr column: median decades |log10(lr/optimal_lr)| of the best sgd|momentum trial "
                 f"(best plain-sgd trial in brackets); optimal_lr = {optimal:.4g} (GD's 2/(lam_max+lam_min); "
                 "momentum's best lr is lower by design)")
    notes.append(f"total wall time {total_wall:.0f} s")
    worst = max(ratios, key=ratios.get)
    failed = not all(verdicts.values())
    path = _common.write_results("search_quality", {
        "bench": "search_quality", "machine": info,
        "settings": {"seeds": seeds,
                     "epochs": {"digits-mlp": digits_epochs or 20, "quadratic": args.quadratic_epochs or 10},
                     "pruner": args.pruner, "workers": workers, "quick": args.quick, "variants": VARIANTS,
                     "criterion": "median over seeds of best val_loss (complete trials): TPE@25 <= random@100"},
        "studies": summaries,
        "ratios_tpe25_over_random100": ratios, "quadratic_val_minimum": floor,
        "quadratic_median_excess": excess, "met": verdicts, "total_wall_s": total_wall,
        "headline": {"worst_task": worst, "ratio": ratios[worst]},
        "passed": not failed,
    })
    notes.append(f"results: {path}")
    headline = ("headline: median best val_loss TPE@25 / random@100: "
                + ", ".join(f"{t} {r:.4f}" for t, r in ratios.items())
                + f"; worst {worst} {ratios[worst]:.4f} (target <= 1, "
                + ("MET" if verdicts[worst] else "MISSED") + ")")
    _common.print_table(["task", "study", *(f"seed {s}" for s in seeds), "median", "lr decades off"],
                        rows, headline, notes)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
