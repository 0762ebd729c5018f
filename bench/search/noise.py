"""How much of a search's best value is luck: the best trial of each arm, trained again with other training seeds.

A trial's value is one noisy evaluation of its configuration (initial weights, shuffles). The best of N trials is
the best of N noisy draws, so the more trials an arm runs, the more its best value is flattered by a lucky seed
(the winner's curse). This trains the best configuration of lrsearch's default after 25 trials and of random search
after 25 and after 100 trials again, with ``--retrain`` other training seeds each (same data, same epochs), and
compares what the search recorded with what the configuration is worth: the median of its retrained values. It
reads the configurations ``run.py`` recorded (``bench/results/search/<task>/seed<s>.json``; random search's are
replayed from its seed where a run did not record them) and writes ``NOISE.md`` and ``noise.json`` beside them.

    python bench/search/noise.py                          # every task and seed recorded, 3 retraining seeds
    python bench/search/noise.py --tasks digits-cnn --seeds 0 1 2 --retrain 5
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

RESULTS = HERE.parent / "results" / "search"
PICKS = (("lrsearch", 25), ("random", 25), ("random", 100))
"""(arm, trials): whose best configuration is trained again."""
RETRAIN_SEED = 1000
"""Retraining seeds are RETRAIN_SEED + seed * 100 + k: never a seed the search trained with."""


def replay_random(spec: Any, trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The random arm's trials with their configurations, where the run did not record them: Optuna's random
    sampler draws the same configurations whatever the results, so asking its seed for as many trials again gives
    them back. Checked against the optimizer and lr the run recorded for every trial."""
    import optuna

    from lrsearch.config.priors import coordinates

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=spec.sampler.seed))
    space = coordinates(spec.space())
    out = []
    for recorded in trials:
        trial = study.ask()
        config = space.suggest(trial)
        study.tell(trial, 0.0)
        if config["optimizer"] != recorded["optimizer"] or not math.isclose(config["params"]["lr"], recorded["lr"]):
            raise RuntimeError(f"trial {recorded['number']}: replayed {config['optimizer']} {config['params']['lr']}, "
                               f"recorded {recorded['optimizer']} {recorded['lr']}")
        out.append({**recorded, "config": config})
    return out


def best_trial(trials: list[dict[str, Any]], n: int, maximize: bool) -> dict[str, Any] | None:
    done = [t for t in trials[:n] if t["value"] is not None and math.isfinite(t["value"]) and t.get("config")]
    return (max if maximize else min)(done, key=lambda t: t["value"]) if done else None


def job(path: str, retrain: int) -> dict[str, Any]:
    """Retrain the picked best trials of one task and seed; their recorded and retrained values."""
    import warnings

    sys.path[:0] = [str(HERE)]
    warnings.filterwarnings("ignore")
    import optuna
    import torch
    from search_tasks import TASKS

    from lrsearch.config.spec import spec_from_dict
    from lrsearch.training.prepared import prepare
    from lrsearch.training.runner import train_trial
    from lrsearch.training.trial import TrialSettings

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(1)
    doc = json.loads(Path(path).read_text())
    task, seed, maximize = TASKS[doc["task"]], doc["seed"], doc["direction"] == "maximize"
    prepared = prepare(spec_from_dict(task.study(seed)))
    worst = -math.inf if maximize else math.inf
    out: dict[str, Any] = {"task": doc["task"], "seed": seed, "picks": {}}
    spec = spec_from_dict(task.study(seed) | {"sampler": {"name": "random", "seed": seed}})
    for arm, n in PICKS:
        trials = doc["arms"].get(arm, {}).get("trials", [])
        if arm == "random" and trials and not trials[0].get("config"):
            trials = replay_random(spec, trials)
        best = best_trial(trials, n, maximize)
        if best is None:
            continue
        values = []
        for k in range(retrain):
            settings = TrialSettings(task.epochs, task.batch_size, RETRAIN_SEED + seed * 100 + k)
            outcome = train_trial(prepared.task, prepared.data, best["config"], settings)
            value = outcome.final.get(task.metric)
            values.append(worst if outcome.diverged or value is None or not math.isfinite(value) else value)
        out["picks"][f"{arm}@{n}"] = {"trial": best["number"], "recorded": best["value"], "retrained": values}
    return out


def report(results: list[dict[str, Any]], retrain: int) -> str:
    lines = [f"## The best configurations trained again ({retrain} other training seeds each)", "",
             "Per task, medians over seeds: the best value the search recorded, and the median of the same "
             "configuration's values retrained with other seeds (what it is worth).", "",
             "| task | seeds | lrsearch@25 recorded / retrained | random@25 recorded / retrained | "
             "random@100 recorded / retrained |", "|---|---|---|---|---|"]
    for task in sorted({r["task"] for r in results}):
        rows = [r for r in results if r["task"] == task]
        cells = []
        for pick in ("lrsearch@25", "random@25", "random@100"):
            have = [r["picks"][pick] for r in rows if pick in r["picks"]]
            if not have:
                cells.append("-")
                continue
            recorded = statistics.median(p["recorded"] for p in have)
            retrained = statistics.median(statistics.median(p["retrained"]) for p in have)
            cells.append(f"{recorded:.4g} / **{retrained:.4g}**")
        lines.append(f"| {task} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--tasks", nargs="+", default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--retrain", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    paths = [p for p in sorted(args.results.glob("*/seed*.json"))
             if (args.tasks is None or p.parent.name in args.tasks)
             and (args.seeds is None or int(p.stem.removeprefix("seed")) in args.seeds)]
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(job, [str(p) for p in paths], [args.retrain] * len(paths)))
    (args.results / "noise.json").write_text(json.dumps(results, indent=1))
    text = report(results, args.retrain)
    (args.results / "NOISE.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
