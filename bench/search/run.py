"""The search benchmark: lrsearch's default search against what a user would pick instead, side by side, on tasks
where the optimizer choice matters, over many seeds (issue 13).

Arms (``arms.py``): lrsearch's default (the study file names no sampler or pruner), random search at 100 trials
(its first 10 and 25 are random@10 and @25), the textbook defaults run once each, Optuna out of the box (TPE +
Hyperband), lrsearch's previous default (its TPE + Hyperband), and Syne Tune's ASHA where ``syne_tune`` is
installed. Every arm trains through lrsearch's own trainer and study loop, on Optuna's in-memory storage. Seed s
is the sampler's seed and the training seed (initial weights, shuffles). Jobs (one task, one seed, every arm) run
in ``--workers`` processes with one torch thread each; each job writes ``bench/results/search/<task>/seed<s>.json``
and skips arms already there (``--fresh`` reruns them). Then ``report.py`` writes ``REPORT.md``, ``summary.json``
and a plot per task beside them, and prints the report.

    python bench/search/run.py                     # every task, seeds 0-9: an hour or two on 2 cores
    python bench/search/run.py --quick             # 3 cheap tasks, 3 seeds: a few minutes
    python bench/search/run.py --tasks digits-mlp --seeds 0 1 2 --arms lrsearch random textbook

Exits non-zero when lrsearch's default misses a target on a task (see report.py).
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
QUICK = {"tasks": ["quadratic", "digits-mlp", "teacher-reg"], "seeds": [0, 1, 2]}


def job(task_name: str, seed: int, arm_names: list[str], out: str, fresh: bool) -> str:
    """Every arm of one task and seed, in this process; returns one line of progress."""
    import warnings

    sys.path[:0] = [str(HERE)]
    warnings.filterwarnings("ignore")
    import optuna
    import torch
    from arms import ARMS, run_arm
    from search_tasks import TASKS

    from lrsearch.config.spec import spec_from_dict
    from lrsearch.training.prepared import prepare

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(1)
    task = TASKS[task_name]
    path = Path(out) / task_name / f"seed{seed}.json"
    doc = json.loads(path.read_text()) if path.exists() else {
        "task": task_name, "seed": seed, "metric": task.metric, "direction": task.direction, "epochs": task.epochs,
        "holdout": task.holdout, "arms": {}}
    if fresh:  # rerun the arms asked for; keep the others' results
        doc["arms"] = {name: arm for name, arm in doc["arms"].items() if name not in arm_names}
    study = task.study(seed)
    prepared = prepare(spec_from_dict(study))
    done = []
    for name in arm_names:
        if name in doc["arms"]:
            continue
        doc["arms"][name] = run_arm(ARMS[name], study, prepared)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
        done.append(f"{name} {doc['arms'][name]['wall_seconds']:.0f}s")
    return f"{task_name} seed {seed}: {', '.join(done) or 'nothing to do'}"


def main() -> int:
    from arms import ARMS, available
    from search_tasks import TASKS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 cheap tasks, 3 seeds")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--fresh", action="store_true",
                        help="rerun the chosen arms where already recorded (the other arms' results are kept)")
    args = parser.parse_args()
    tasks = args.tasks or (QUICK["tasks"] if args.quick else list(TASKS))
    seeds = args.seeds or (QUICK["seeds"] if args.quick else list(range(10)))
    installed = lambda module: importlib.util.find_spec(module) is not None  # noqa: E731
    arms = [a for a in (args.arms or list(ARMS)) if available(ARMS[a], installed)]
    skipped = sorted(set(args.arms or ARMS) - set(arms))
    _common.print_machine(_common.machine_info(torch_threads=1))
    print(f"tasks {tasks}, seeds {seeds}, arms {arms}" + (f" (not installed: {skipped})" if skipped else ""))
    started, jobs = time.perf_counter(), [(t, s) for s in seeds for t in tasks]
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(job, t, s, arms, str(args.results), args.fresh) for t, s in jobs]
        for index, future in enumerate(as_completed(futures), start=1):
            print(f"[{index}/{len(jobs)} {time.perf_counter() - started:6.0f}s] {future.result()}", flush=True)
    from report import report

    text, summaries = report(args.results)
    print(text)
    missed = [f"{task} {name}" for task, s in summaries.items() if task in tasks
              for name, met in s["targets"].items() if met is False]
    print("headline: lrsearch's default " + (f"misses {', '.join(missed)}" if missed else "meets every target"))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
