"""The search benchmark: lrsearch's default search against what a user would pick instead, judged by what each
arm's returned configuration is worth when a user retrains it on a new seed (issue 23), on tasks where the
optimizer choice matters, over many seeds.

Arms (``arms.py``): lrsearch's default (the study file names no sampler or pruner; it confirms nothing), the
default with confirmation settings (2 configurations x 1 new seed, ``confirm: auto``'s and the default until
2026-12-02; 3 x 1; 1 x 2), random search (one run of 100 trials: random@12, about the default's epochs, random@25 and
random@100), the textbook configurations run once each, Optuna out of the box (TPE + Hyperband) and Syne Tune's
ASHA where ``syne_tune`` is installed; with ``--arms``, the variants of the default, one study-file setting changed
each (``targets.ABLATIONS``). Every arm trains through lrsearch's own trainer and study loop, on Optuna's
in-memory storage. Seed s is the sampler's seed and the training seed (initial weights, shuffles). Then each arm's
returned configuration is trained again on ``--retrain`` fresh seeds, the same for every arm of a task and seed
(``retrain.py``), and, on search seeds below ``--anytime-seeds``, its choice after 5, 10 and 25 trials too.
Warm-start pairs (``pairs.py``): a source study, then its target cold and warm-started from the source's answer.
Family tasks (``search_tasks.FAMILY_TASKS``: a small transformer language model and catalogue variants searching
AdamW, Muon, Lion, SOAP, Schedule-Free AdamW and Prodigy) run the default against ``tuned-adamw`` (the default
restricted to AdamW), random@25 and the textbook, on ``--family-seeds`` seeds; they are not base tasks (the
targets do not count them) and the report gives them a section of their own (which family the default returns,
and by how much it beats tuned AdamW).

Jobs (one task and seed with every arm, or one pair and seed) run in ``--workers`` processes with one torch thread
each; each writes ``<results>/<task>/seed<s>.json`` (``<results>/pairs/<pair>/seed<s>.json``) and skips what is
already there: arms, and retrained values by (configuration, seed) (``--fresh`` reruns the chosen arms). Then
``report.py`` writes ``REPORT.md``, ``summary.json`` and a plot per task beside them, and prints the report.

    python bench/search/run.py                   # every base task and pair, seeds 0-9, family tasks on
                                                 # --family-seeds: hours on 2 cores
    python bench/search/run.py --quick           # 2 cheap tasks and 1 pair, 3 seeds: a few minutes
    python bench/search/run.py --tasks digits-mlp quadratic --seeds 0 1
    python bench/search/run.py --pairs digits-wider --seeds 0 1 2
    python bench/search/run.py --tasks tiny-lm --seeds 0 1            # a family task
    python bench/search/run.py --tasks quadratic --arms lrsearch-uniform-quarter lrsearch-epochs-1   # ablations

Exits non-zero when lrsearch's default misses a target on what ran (see ``targets.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import _common  # noqa: E402  (bench/_common.py: the machine, tables)

RESULTS = HERE.parent / "results" / "search"
COST = {"tiny-lm": 6.0, "digits-cnn-families": 2.5, "char-lm-families": 2.5, "digits-mlp": 2.5, "digits-cnn": 1.0,
        "diabetes-mlp": 0.9, "resmlp-bn": 0.7, "teacher-reg": 0.6, "char-lm": 0.6, "quadratic": 0.2}
"""Seconds a full trial takes on one core, roughly (2026-12, AMD EPYC; a family task's: the mean over the trials
its default search runs, Muon's the most): orders the jobs, nothing else."""
QUICK = {"tasks": ["quadratic", "teacher-reg"], "seeds": [0, 1, 2], "random_trials": 25}
"""``--quick``: the two cheapest base tasks (a full trial 0.2 s and 0.6 s on one core), 3 seeds (the fewest that
give a spread), and random search stopped at 25 trials (random@100 is never a target, and its 75 more trials
would be most of the quick run). Arms: ``arms.QUICK_ARMS``."""
FAMILY_RANDOM_TRIALS = 25
"""Random search on the family tasks stops at 25 trials: random@100 is never a target, and a family task's trial
costs several of a base task's (a Muon trial most)."""
FAMILY_SEEDS = 5
"""Search seeds of the family tasks in a run that names no ``--seeds``: enough for a spread of the gain over tuned
AdamW, at about 40 minutes of the full run on 2 cores (10 seeds would double that)."""


def job(task_name: str, seed: int, arm_names: list[str], out: str, fresh: bool, retrain: int, anytime: bool,
        random_trials: int) -> str:
    """Every arm of one task and seed, then their choices retrained, in this process; one line of progress."""
    import contextlib
    import io

    # prodigyopt prints a line each time a Prodigy with weight decay is built: hundreds of lines a family task.
    with contextlib.redirect_stdout(io.StringIO()):
        return _job(task_name, seed, arm_names, out, fresh, retrain, anytime, random_trials)


def _job(task_name: str, seed: int, arm_names: list[str], out: str, fresh: bool, retrain: int, anytime: bool,
         random_trials: int) -> str:
    import dataclasses
    import warnings

    sys.path[:0] = [str(HERE)]
    warnings.filterwarnings("ignore")
    import optuna
    import torch
    from arms import ARMS, run_arm
    from retrain import Retrainer, check_fresh, fresh_seeds, retrain_task
    from search_tasks import ALL_TASKS

    from lrsearch.config.spec import spec_from_dict
    from lrsearch.training.prepared import prepare

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(1)
    task = ALL_TASKS[task_name]
    path = Path(out) / task_name / f"seed{seed}.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    if doc.get("format") != 2:  # a file of the suite before retraining: start again
        doc = {"format": 2, "task": task_name, "seed": seed, "metric": task.metric, "direction": task.direction,
               "epochs": task.epochs, "holdout": task.holdout, "arms": {}, "retrained": {}}
    if fresh:  # rerun the arms asked for; keep the others' results
        doc["arms"] = {name: arm for name, arm in doc["arms"].items() if name not in arm_names}

    def save() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))

    arms = [dataclasses.replace(ARMS[name], n_trials=random_trials) if name == "random" else ARMS[name]
            for name in arm_names]
    study = task.study(seed)
    prepared = prepare(spec_from_dict(study))
    done, notes = [], []
    for arm in arms:
        if doc["arms"].get(arm.name, {}).get("budget", 0) >= arm.n_trials:
            continue  # recorded (random search to 100 trials also serves a run that asks for 25)
        result = run_arm(arm, study, prepared)
        if isinstance(result, str):
            notes.append(result)
            continue
        doc["arms"][arm.name] = result
        save()
        done.append(f"{arm.name} {result['wall_seconds']:.0f}s")
    seeds = fresh_seeds(seed, retrain)
    check_fresh(doc, seeds)
    retrainer = Retrainer(prepared, doc["retrained"], save)
    recorded = [ARMS[name] for name in ARMS if name in doc["arms"]]  # with arms of earlier runs: the report reads all
    retrain_task(doc, recorded, retrainer, seeds, anytime)
    doc["skipped"] = notes
    save()
    done.append(f"{retrainer.trained} retrained")
    return f"{task_name} seed {seed}: {', '.join(done)}" + "".join(f"\n    note: {n}" for n in notes)


def main() -> int:
    from arms import ARMS, DEFAULT_ARMS, FAMILY_ARMS, QUICK_ARMS, available
    from pairs import PAIRS, QUICK_PAIR, pair_job
    from search_tasks import FAMILY_TASKS, TASKS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"tasks {QUICK['tasks']} and pair {QUICK_PAIR}, "
                        f"seeds {QUICK['seeds']}, random search to {QUICK['random_trials']} trials")
    parser.add_argument("--tasks", nargs="+", choices=[*TASKS, *FAMILY_TASKS], default=None,
                        help=f"base tasks {list(TASKS)}; family tasks {list(FAMILY_TASKS)}")
    parser.add_argument("--pairs", nargs="*", choices=list(PAIRS), default=None,
                        help="warm-start pairs (all when named without any); without --tasks, no task runs")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="search seeds of every task and pair "
                        "named (default: 0-9; family tasks: --family-seeds)")
    parser.add_argument("--family-seeds", type=int, default=FAMILY_SEEDS,
                        help="without --seeds, the family tasks run seeds 0 to this minus 1")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=None,
                        help=f"every task's arms (default: base tasks {list(DEFAULT_ARMS)}, family tasks "
                             f"{list(FAMILY_ARMS)}; --quick {list(QUICK_ARMS)})")
    parser.add_argument("--retrain", type=int, default=3, help="fresh seeds each returned configuration retrains on")
    parser.add_argument("--anytime-seeds", type=int, default=3,
                        help="the anytime view (choices after 5, 10, 25 trials) retrains on search seeds below this")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--fresh", action="store_true",
                        help="rerun the chosen arms where already recorded (the other arms' results are kept)")
    args = parser.parse_args()
    if args.retrain < 3:
        parser.error("--retrain: at least 3 fresh seeds (one or two cannot tell a configuration from its seed)")
    if args.pairs is not None:  # --pairs alone: every pair, no task
        tasks, pairs = args.tasks or [], args.pairs or list(PAIRS)
    else:
        tasks = args.tasks or (QUICK["tasks"] if args.quick else [*TASKS, *FAMILY_TASKS])
        pairs = [QUICK_PAIR] if args.quick else [] if args.tasks else list(PAIRS)
    seeds = args.seeds or (QUICK["seeds"] if args.quick else list(range(10)))
    family_seeds = args.seeds or (QUICK["seeds"] if args.quick else list(range(args.family_seeds)))
    installed = lambda module: importlib.util.find_spec(module) is not None  # noqa: E731
    asked = args.arms or (QUICK_ARMS if args.quick else None)

    def plan(task: str) -> tuple[list[str], list[int], int]:
        """A task's arms (before asking what is installed), search seeds and random-search trials."""
        family = task in FAMILY_TASKS
        random_trials = QUICK["random_trials"] if args.quick else FAMILY_RANDOM_TRIALS if family else 100
        names = list(asked or (FAMILY_ARMS if family else DEFAULT_ARMS))
        return names, family_seeds if family else seeds, random_trials

    plans = {task: plan(task) for task in tasks}
    skipped = sorted({a for names, _, _ in plans.values() for a in names if not available(ARMS[a], installed)})
    plans = {task: ([a for a in names if a not in skipped], s, n) for task, (names, s, n) in plans.items()}
    machine = _common.machine_info(torch_threads=1)
    _common.print_machine(machine)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "machine.json").write_text(json.dumps(machine))
    for task, (names, task_seeds, random_trials) in plans.items():
        print(f"{task}: seeds {task_seeds}, arms {names}"
              + (f", random search to {random_trials} trials" if random_trials < 100 and "random" in names else ""))
    print(f"pairs {pairs}" + (f", seeds {seeds}" if pairs else "") + (f"; not installed: {skipped}" if skipped else "")
          + f"; {args.retrain} fresh seeds a configuration; anytime view on seeds below {args.anytime_seeds}",
          flush=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        # The costliest jobs first, so that two workers end together: tasks by the cost of a trial, then the pairs.
        by_cost = sorted(tasks, key=lambda t: -COST.get(t, 1.0))
        futures = [pool.submit(job, t, s, plans[t][0], str(args.results), args.fresh, args.retrain,
                               s < args.anytime_seeds, plans[t][2]) for t in by_cost for s in plans[t][1]]
        futures += [pool.submit(pair_job, p, s, str(args.results), args.fresh, args.retrain)
                    for p in pairs for s in seeds]
        for index, future in enumerate(as_completed(futures), start=1):
            print(f"[{index}/{len(futures)} {time.perf_counter() - started:6.0f}s] {future.result()}", flush=True)
    from report import report

    text, suite = report(args.results, tasks=tasks, pairs=pairs)
    print(text)
    print(f"wall {time.perf_counter() - started:.0f}s")
    missed = [name for name, held in suite["targets"].items() if held is not True]
    verdict = (f"misses {', '.join(missed)}" if missed else "meets every target"
               if set(suite["targets"]) - {"T-reproduce"} else "has no target on what ran (no base task or pair)")
    print(f"headline: lrsearch's default {verdict}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
