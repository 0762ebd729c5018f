"""What an arm's choice is worth: its configuration trained again on fresh seeds, the way a user retrains what a
search exported.

A trial's value is one noisy evaluation of its configuration (initial weights, shuffles), so a search's best value
is the best of N noisy draws and flattered the more the more trials it ran (the winner's curse). The suite judges
an arm by what its returned configuration retrains to: on ``--retrain`` fresh training seeds (init and data order)
that no arm trained with, the same seeds for every arm of a task and search seed (paired: a difference between two
arms is never a difference of seeds). Retraining is deterministic (CPU, one thread, the same seed gives the same
bits, checked once a job: :func:`reproduce`), so each (configuration, seed) trains once: the values live in the
job's JSON under ``retrained``, keyed by the configuration's canonical JSON and the seed, shared by every arm
whose choice is the same configuration (the textbook's recur) and kept across reruns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from arms import Arm, complete, views

if TYPE_CHECKING:
    from lrsearch.training.prepared import Prepared

FRESH_SEED_BASE = 10_000
"""Fresh seeds are FRESH_SEED_BASE + 100 * search seed + k: far from the search seeds (0-9) and from seeds a study
derives from them; :func:`check_fresh` fails the job if a study trained on one anyway."""
ANYTIME = (5, 10, 25)
"""After how many trials the anytime view retrains each arm's choice (random: also after 100)."""


def fresh_seeds(search_seed: int, count: int) -> list[int]:
    return [FRESH_SEED_BASE + 100 * search_seed + k for k in range(count)]


def config_key(config: dict[str, Any]) -> str:
    """The cache key of a configuration: its canonical JSON (floats written exactly, keys sorted)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


class Retrainer:
    """Trains configurations of one task again, each (configuration, seed) once; ``cache`` is the job's
    ``retrained`` mapping, ``save`` writes the job file after each new value (an interrupted job keeps them)."""

    def __init__(self, prepared: Prepared, cache: dict[str, dict[str, float | None]], save: Callable[[], None]) -> None:
        self.prepared, self.cache, self.save = prepared, cache, save
        self.trained = 0
        """New trainings in this process (the rest came from the cache)."""

    def value(self, config: dict[str, Any], seed: int) -> float | None:
        """The configuration's objective trained on ``seed``; None when it diverged."""
        from lrsearch.training.runner import train_trial
        from lrsearch.training.trial import TrialSettings

        values = self.cache.setdefault(config_key(config), {})
        if str(seed) not in values:
            spec = self.prepared.spec
            settings = TrialSettings(spec.budget.epochs, spec.train.batch_size, seed, precision=spec.train.precision)
            outcome = train_trial(self.prepared.task, self.prepared.data, config, settings)
            value = None
            if not outcome.diverged:
                value = outcome.objective(spec.objective.metric, spec.objective.direction, spec.objective.at)[0]
            values[str(seed)] = value if value is not None and math.isfinite(value) else None
            self.trained += 1
            self.save()
        return values[str(seed)]

    def values(self, config: dict[str, Any], seeds: list[int]) -> list[float | None]:
        return [self.value(config, seed) for seed in seeds]


def seen_seeds(doc: dict[str, Any]) -> set[int]:
    """Every training seed a study of the job trained with (or says its answer's values came from)."""
    seeds = {t["seed"] for result in doc["arms"].values() for t in result["trials"] if t.get("seed") is not None}
    for result in doc["arms"].values():
        seeds |= set((result.get("returned") or {}).get("seeds") or [])
    return seeds


def check_fresh(doc: dict[str, Any], seeds: list[int]) -> None:
    """Fail the job where a retraining seed is one a study trained with: its value would not be fresh."""
    clash = sorted(set(seeds) & seen_seeds(doc))
    if clash:
        raise RuntimeError(f"{doc.get('task', doc.get('pair'))} seed {doc['seed']}: retraining seeds {clash} were "
                           "training seeds of a study; raise FRESH_SEED_BASE in bench/search/retrain.py")


def best_recorded(trials: list[dict[str, Any]], maximize: bool) -> dict[str, Any] | None:
    """The best complete trial (the first of equal values), or None."""
    done = [t for t in trials if complete(t)]
    return (max if maximize else min)(done, key=lambda t: t["value"]) if done else None


def choice(result: dict[str, Any], arm: Arm, n: int, maximize: bool) -> dict[str, Any] | None:
    """The arm's choice after its first ``n`` trials: at the end of a lrsearch search, what the study returns
    (``arms.returned``); otherwise, and for the baselines, the best recorded complete trial among the first ``n``."""
    trials = result["trials"]
    if not arm.baseline and n >= len(trials) and result.get("returned"):
        return dict(result["returned"])
    best = best_recorded(trials[:n], maximize)
    if best is None:
        return None
    return {"trial": best["number"], "config": best["config"], "recorded": best["value"], "values": [best["value"]],
            "seeds": [best.get("seed")]}


def spent(result: dict[str, Any], n: int) -> tuple[int, float]:
    """Epochs and wall seconds of the arm's first ``n`` trials (all of them: the arm's whole wall time)."""
    trials = result["trials"][:n]
    epochs = sum(t["epochs"] for t in trials)
    if n >= len(result["trials"]) or any(t.get("seconds") is None for t in trials):
        return epochs, result["wall_seconds"]
    return epochs, round(sum(t["seconds"] for t in trials), 3)


def retrained_choice(result: dict[str, Any], arm: Arm, n: int, maximize: bool, retrainer: Retrainer,
                     seeds: list[int]) -> dict[str, Any] | None:
    """The arm's choice after ``n`` trials with its retrained values, the trials it counts, its epochs and wall."""
    n = min(n, len(result["trials"]))
    pick = choice(result, arm, n, maximize)
    if pick is None:
        return None
    epochs, wall = spent(result, n)
    return {**pick, "arm": arm.name, "n": n, "retrained": retrainer.values(pick["config"], seeds), "epochs": epochs,
            "wall_seconds": wall}


def retrain_task(doc: dict[str, Any], arms: list[Arm], retrainer: Retrainer, seeds: list[int],
                 anytime: bool) -> None:
    """Fill a task job's ``choices`` (each arm's returned configuration, per view), ``textbook_configs`` (every
    textbook configuration, diverged or not: the textbook's own seed spread), ``anytime`` (each arm's choice after
    5, 10, 25 (100) trials, when ``anytime``) and ``reproduce``, retraining what the cache does not hold."""
    maximize = doc["direction"] == "maximize"
    doc["fresh_seeds"] = seeds
    doc["choices"], doc["anytime"] = {}, {}
    ran = [(arm, doc["arms"][arm.name]) for arm in arms if arm.name in doc["arms"]]
    for arm, result in ran:
        for name, n in views(arm, len(result["trials"])).items():
            if pick := retrained_choice(result, arm, n, maximize, retrainer, seeds):
                doc["choices"][name] = pick
    if "textbook" in doc["arms"]:
        doc["textbook_configs"] = {
            t["portfolio"] or f"trial {t['number']}": {"config": t["config"], "recorded": t["value"],
                                                        "retrained": retrainer.values(t["config"], seeds)}
            for t in doc["arms"]["textbook"]["trials"] if t.get("config")}
    for arm, result in ran if anytime else []:
        prefixes = sorted({*ANYTIME, *(n for n in arm.views if n <= len(result["trials"]))})
        doc["anytime"][arm.name] = {str(n): pick for n in prefixes
                                    if (pick := retrained_choice(result, arm, n, maximize, retrainer, seeds))}
    doc["reproduce"] = reproduce(doc, retrainer)


def reproduce(doc: dict[str, Any], retrainer: Retrainer) -> dict[str, Any] | None:
    """Retrain one complete trial on its own training seed: the value must come back bit for bit, else retraining
    does not measure what the studies trained (and the cache would be wrong). The first complete trial of the
    first arm, trained in full (a portfolio trial, never pruned)."""
    for result in doc["arms"].values():
        trial = next((t for t in result["trials"] if complete(t) and t.get("seed") is not None), None)
        if trial is not None:
            value = retrainer.value(trial["config"], trial["seed"])
            return {"arm": result["arm"], "trial": trial["number"], "seed": trial["seed"], "recorded": trial["value"],
                    "retrained": value, "equal": value == trial["value"]}
    return None
