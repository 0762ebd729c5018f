"""Pruning: epochs spent until the best val_loss of a no-pruning study is reached, hyperband vs none.

For each sampler seed, two studies of ``studies/digits-mlp.yaml`` run through ``lrsearch.tune``, 40 trials
each, the same sampler (the study file's TPE) with the same seed, the same ``train.seed``, the same study name (the
Hyperband pruner assigns trials to brackets by hashing the study name and trial number), each in its own SQLite
file:

* A: ``pruner: none``;
* B: ``pruner: hyperband`` (the study file's default; ``--b-pruner`` names another of lrsearch's pruners).

Target value = A's best val_loss. For each study, its trials in order (trial number), the cumulative epochs
(sum of ``len(trial.intermediate_values)``: every epoch begun, pruned and diverged trials included) until the first
COMPLETE trial whose final value is <= the target, that trial's epochs included. If B never reaches A's best, its
figure is the epochs of the whole study, marked "not reached", with the gap of its best to the target, and its ratio
counts as infinite. The fair variant "within X%": the same count with the threshold A's best x (1 + X/100), for A
and for B. The 40 trials bound A; B is not held to A's trial count (its sampler history differs from A's from its
first pruned trial on, so reaching A's exact best within the same 40 trials would be partly luck): B runs one trial
at a time, up to 160, until it reaches A's best or has spent A's total epochs (past which its ratio is over 1
anyway). Its epochs are counted up to the trial that reaches the target.

A lower bound holds for any pruner when A's best is one of TPE's 10 random start-up trials, number i: B draws the
same start-up configurations, each of its first i trials spends at least one epoch, and a trial must run all its
epochs to complete, so B/A >= (epochs + i) / A's epochs (seed 0: A's best is trial 1, so >= 21/40).
Also reported: the epochs per trial B/A (what pruning saves on an average trial), and the Spearman correlation, in
A's complete trials, of the val_loss at Hyperband's rungs with the final one. lrsearch reports epoch k as step k-1
and Optuna's Hyperband (min_resource 1, reduction 3) promotes at steps 1, 3 and 9: after 2, 4 and 10 epochs.

    python bench/pruning.py [--quick] [--seeds 0 1 2] [--within 1 5 10] [--b-trials 160] [--b-pruner hyperband]

Target: B uses <= 1/3 of A's epochs (median over seeds of B/A, exact target). Headline: that ratio, and the within
variants.
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

STUDY_FILE = "digits-mlp.yaml"
TARGET = 1 / 3
N_TRIALS = 40
B_TRIALS = 4 * N_TRIALS
STARTUP_TRIALS = 10
"""Optuna's TPE draws its first 10 trials at random: the same configurations in A and B."""


def study_dict(pruner: str, seed: int, epochs: int | None, n_trials: int = N_TRIALS) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load((_common.STUDIES_DIR / STUDY_FILE).read_text())
    data["sampler"] = {**data.get("sampler", {}), "seed": seed}
    data["pruner"] = {"name": pruner}
    data["budget"]["n_trials"] = n_trials
    if epochs is not None:
        data["budget"]["epochs"] = epochs
    data["train"]["threads"] = 1
    return data


def run_job(pruner: str, seed: int, epochs: int | None, workdir: str, n_trials: int = N_TRIALS,
            until: tuple[float, int] | None = None) -> dict[str, Any]:
    """One study in a worker process; its trials as (number, state, value, epochs).

    With ``until = (target, cap)`` the study runs one trial more at a time, up to ``n_trials``, and stops at the
    first complete trial whose value is <= target or once it has spent ``cap`` epochs. It is lrsearch's own study
    loop (``run_study``) on one study object, so the sampler and its random state carry on from trial to trial
    exactly as in one ``tune`` of ``n_trials``."""
    from lrsearch.config.overrides import Overrides
    from lrsearch.config.spec import spec_from_dict
    from lrsearch.study.loop import run_study
    from lrsearch.study.storage import create_study, open_storage
    from lrsearch.training.prepared import prepare
    from lrsearch.training.threads import configure_threads

    data = study_dict(pruner, seed, epochs, n_trials)
    storage = f"sqlite:///{Path(workdir) / f'{pruner}-seed{seed}.db'}"
    start = time.perf_counter()
    spec = spec_from_dict(data)
    prepared = prepare(spec)
    configure_threads(spec.train.threads, prepared=prepared)
    opened = open_storage(storage)
    study = create_study(spec, opened, spec.name)
    for total in range(1, n_trials + 1) if until else [n_trials]:
        prepared.spec = Overrides(n_trials=total).apply(spec)
        run_study(study, opened, prepared)
        if until is not None:
            trials = study.get_trials(deepcopy=False)
            if any(t.state.name == "COMPLETE" and t.value <= until[0] for t in trials) or \
                    sum(len(t.intermediate_values) for t in trials) >= until[1]:
                break
    wall = time.perf_counter() - start
    trials = [
        {"number": t.number, "state": t.state.name, "value": t.value, "epochs": len(t.intermediate_values),
         "optimizer": t.user_attrs.get("config", {}).get("optimizer"),
         "diverged": bool(t.user_attrs.get("diverged", False)),
         "curve": [t.intermediate_values[k] for k in sorted(t.intermediate_values)]}
        for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    ]
    return {"pruner": pruner, "seed": seed, "sampler": data["sampler"], "study_name": data["name"],
            "epochs_per_trial": data["budget"]["epochs"], "wall_s": wall, "trials": trials}


def best(trials: list[dict[str, Any]]) -> float:
    values = [t["value"] for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    return min(values) if values else math.inf


def epochs_until(trials: list[dict[str, Any]], threshold: float) -> int | None:
    """Cumulative epochs, in trial order, until the first complete trial with value <= threshold (included)."""
    spent = 0
    for t in trials:
        spent += t["epochs"]
        if t["state"] == "COMPLETE" and t["value"] is not None and t["value"] <= threshold:
            return spent
    return None


def rung_correlations(trials: list[dict[str, Any]], steps: tuple[int, ...] = (1, 3, 9)) -> dict[int, float]:
    """Spearman rank correlation, over the complete trials of a no-pruning study, between the val_loss reported at
    ``step`` (after step + 1 epochs) and the final one: how well the steps where Hyperband (min_resource 1,
    reduction 3) compares trials predict the result. 1 is perfect; near 0 means pruning there is a coin toss."""
    from scipy.stats import spearmanr

    complete = [t for t in trials if t["state"] == "COMPLETE" and len(t["curve"]) == t["epochs"]]
    out = {}
    for step in steps:
        pairs = [(t["curve"][step], t["value"]) for t in complete if len(t["curve"]) > step]
        out[step] = float(spearmanr(*zip(*pairs, strict=True)).statistic) if len(pairs) >= 3 else math.nan
    return out


def compare(a: dict[str, Any], b: dict[str, Any], within: list[float]) -> dict[str, Any]:
    target = best(a["trials"])
    out: dict[str, Any] = {
        "seed": a["seed"], "target": target, "best_b": best(b["trials"]),
        "gap_b": best(b["trials"]) - target, "gap_b_pct": 100 * (best(b["trials"]) - target) / target,
        "total_epochs_a": sum(t["epochs"] for t in a["trials"]),
        "total_epochs_b": sum(t["epochs"] for t in b["trials"]),
        "epochs_per_trial_a": sum(t["epochs"] for t in a["trials"]) / len(a["trials"]),
        "epochs_per_trial_b": sum(t["epochs"] for t in b["trials"]) / len(b["trials"]),
        "trials_b": len(b["trials"]),
        "pruned_b": sum(t["state"] == "PRUNED" and not t["diverged"] for t in b["trials"]),
        "diverged_a": sum(t["diverged"] for t in a["trials"]), "diverged_b": sum(t["diverged"] for t in b["trials"]),
        "best_trial_a": min((t for t in a["trials"] if t["state"] == "COMPLETE"), key=lambda t: t["value"])["number"],
        "wall_a_s": a["wall_s"], "wall_b_s": b["wall_s"],
        "rung_spearman_a": rung_correlations(a["trials"]),
    }
    epochs_a = epochs_until(a["trials"], target)
    out["lower_bound_any_pruner"] = (a["epochs_per_trial"] + out["best_trial_a"]) / epochs_a \
        if out["best_trial_a"] < STARTUP_TRIALS and epochs_a else 0.0
    for pct in [0.0, *within]:
        threshold = target * (1 + pct / 100)
        ea, eb = epochs_until(a["trials"], threshold), epochs_until(b["trials"], threshold)
        out[f"within_{pct:g}"] = {
            "threshold": threshold, "epochs_a": ea, "epochs_b": eb,
            "b_reached": eb is not None,
            "epochs_b_or_total": eb if eb is not None else out["total_epochs_b"],
            "ratio": (eb / ea) if (eb is not None and ea) else math.inf,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="sampler seeds (default 0 1 2)")
    parser.add_argument("--within", type=float, nargs="+", default=[1.0, 5.0, 10.0],
                        help="percentages for the 'within X%% of A's best' variant")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the study file's, 20)")
    parser.add_argument("--b-trials", type=int, default=B_TRIALS,
                        help=f"most trials of study B (default {B_TRIALS}); B stops at the first trial that reaches "
                        "A's best, or once it has spent A's total epochs")
    parser.add_argument("--b-pruner", default="hyperband", choices=["hyperband", "median", "sha", "wilcoxon"],
                        help="study B's pruner (default hyperband, the study file's)")
    parser.add_argument("--workers", type=int, default=None, help="parallel studies (default: usable cores)")
    args = parser.parse_args(argv)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    workers = args.workers or _common.usable_cores()

    info = _common.machine_info(torch_threads=1)
    _common.print_machine(info)
    print(f"studies/{STUDY_FILE}: {args.epochs or 'study file (20)'} epochs/trial, TPE seeds {seeds}; A = pruner "
          f"none, {N_TRIALS} trials; B = pruner {args.b_pruner}, {args.b_trials} trials; {workers} parallel studies, "
          "1 torch thread each")
    started = time.perf_counter()
    results: dict[tuple[str, int], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="lrsearch-bench-", dir=_common.scratch_base()) as workdir, \
            ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {("none", seed): pool.submit(run_job, "none", seed, args.epochs, workdir) for seed in seeds}
        for seed in seeds:  # B needs A's best: its target, and A's total epochs as B's cap
            a = results[("none", seed)] = futures[("none", seed)].result()
            until = (best(a["trials"]), sum(t["epochs"] for t in a["trials"]))
            futures[(args.b_pruner, seed)] = pool.submit(run_job, args.b_pruner, seed, args.epochs, workdir,
                                                         args.b_trials, until)
        for key, future in futures.items():
            results[key] = future.result()
            r = results[key]
            print(f"  seed {key[1]} pruner {key[0]:9s}: best {best(r['trials']):.5g}, {len(r['trials'])} trials, "
                  f"{sum(t['epochs'] for t in r['trials'])} epochs, {r['wall_s']:.0f} s", flush=True)
    comparisons = [compare(results[("none", s)], results[(args.b_pruner, s)], args.within) for s in seeds]

    rows = []
    for c in comparisons:
        for pct in [0.0, *args.within]:
            w = c[f"within_{pct:g}"]
            b_cell = str(w["epochs_b"]) if w["b_reached"] else f"{w['epochs_b_or_total']} (not reached)"
            rows.append([c["seed"], "A's best" if pct == 0 else f"within {pct:g}%", w["threshold"], w["epochs_a"],
                         b_cell, f"{w['ratio']:.3f}" if math.isfinite(w["ratio"]) else "inf",
                         c["total_epochs_a"], c["total_epochs_b"]])
    notes = []
    for c in comparisons:
        reached = c["within_0"]["b_reached"]
        notes.append(f"seed {c['seed']}: A's best {c['target']:.5g} (trial {c['best_trial_a']}); B's best "
                     f"{c['best_b']:.5g} ({c['gap_b_pct']:+.2f}% vs A's), "
                     + ("reached" if reached else "NOT reached: B's figure is its whole study")
                     + f"; B pruned {c['pruned_b']} trials; diverged A {c['diverged_a']}, B {c['diverged_b']}"
                     + (f"; no pruner can do better than B/A {c['lower_bound_any_pruner']:.3f} here"
                        if c["lower_bound_any_pruner"] else ""))
    medians = {}
    for pct in [0.0, *args.within]:
        medians[pct] = _common.median([c[f"within_{pct:g}"]["ratio"] for c in comparisons])
    total_ratio = _common.median([c["epochs_per_trial_b"] / c["epochs_per_trial_a"] for c in comparisons])
    rungs = {step: _common.median([c["rung_spearman_a"][step] for c in comparisons]) for step in (1, 3, 9)}
    notes.append("how well early epochs predict the final val_loss (A's complete trials, Spearman, median over "
                 "seeds): " + ", ".join(f"after epoch {r + 1}: {v:.2f}" for r, v in rungs.items())
                 + " (where Hyperband compares trials)")
    notes.append("median B/A epochs: " + ", ".join(
        f"{'exact' if p == 0 else f'within {p:g}%'} {m:.3f}" for p, m in medians.items())
        + f"; epochs per trial B/A {total_ratio:.3f} (B reached A's best on "
        f"{sum(c['within_0']['b_reached'] for c in comparisons)}/{len(comparisons)} seeds)")
    notes.append(f"total wall time {time.perf_counter() - started:.0f} s")
    met = medians[0.0] <= TARGET
    path = _common.write_results("pruning", {
        "bench": "pruning", "machine": info,
        "settings": {"study": STUDY_FILE, "n_trials": N_TRIALS, "b_trials": args.b_trials, "b_pruner": args.b_pruner,
                     "epochs": args.epochs or 20, "seeds": seeds,
                     "within_pct": args.within, "quick": args.quick},
        "target": {"b_over_a_max": TARGET, "criterion": "median over seeds, exact target (A's best)"},
        "comparisons": comparisons, "median_ratio": {f"within_{p:g}": m for p, m in medians.items()},
        "median_epochs_per_trial_ratio": total_ratio, "median_rung_spearman": rungs,
        "studies": [results[k] for k in sorted(results)],
        "headline": {"ratio": medians[0.0], "verdict": _common.verdict(met)},
        "passed": met,
    })
    notes.append(f"results: {path}")
    variants = ", ".join(f"within {p:g}% {m:.3f}" for p, m in medians.items() if p)
    headline = (f"headline: B/A epochs to reach A's best = {medians[0.0]:.3f} median over {len(seeds)} seeds "
                f"(target <= {TARGET:.3f}, {_common.verdict(met)}); {variants}")
    _common.print_table(["seed", "criterion", "threshold", "A epochs", "B epochs", "B/A", "A total", "B total"],
                        rows, headline, notes)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
