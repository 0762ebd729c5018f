"""Warm-start pairs: a source study and a target study that a user would run one after the other (the same model
grown wider, the same task trained longer, a new split of the data), and what starting the target from the
source's answer saves.

For each pair and search seed: the source study runs lrsearch's default search (25 trials); its returned
configuration is exported as ``lrsearch export`` writes it (``<pair>/seed<s>-source.json``); then the target study
runs twice, cold (the default search) and warm (the default with ``search: {warm_start: [<that file>]}``). The
target's choice after 1, 2, 5, 10 and 25 trials is retrained on fresh seeds, cold and warm alike, against the
epochs spent to reach it. A lrsearch whose study file rejects ``search.warm_start`` runs the source and skips the
rest, with a printed note; the pair then misses its target (nothing measured).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent

PREFIXES = (1, 2, 5, 10, 25)
"""After how many trials the target's choice is retrained (cold and warm)."""


@dataclass(frozen=True)
class Pair:
    name: str
    source: str
    target: str
    """Task names in ``search_tasks.ALL_TASKS``."""
    change: str
    """What the user changed between the two studies, in their words."""


PAIRS: dict[str, Pair] = {p.name: p for p in [
    Pair("digits-wider", "digits-mlp-h64", "digits-mlp", "the same MLP grown wider: hidden width 64 -> 128"),
    Pair("digits-new-split", "digits-mlp", "digits-mlp-split1", "a new train/val split (random_state 0 -> 1)"),
    Pair("teacher-2x-epochs", "teacher-reg-10ep", "teacher-reg", "the same task trained twice as long: 10 -> 20"),
    Pair("quadratic-2x-epochs", "quadratic-5ep", "quadratic", "the same task trained twice as long: 5 -> 10"),
    Pair("char-lm-wider", "char-lm", "char-lm-h256", "the same language model grown wider: hidden 128 -> 256"),
]}
QUICK_PAIR = "quadratic-2x-epochs"
"""The cheap pair ``run.py --quick`` includes (a quadratic trial takes a fraction of a second)."""


def pair_job(pair_name: str, seed: int, out: str, fresh: bool, retrain: int) -> str:
    """One pair and search seed, in this process: source, export, cold and warm target, their retrained prefixes.
    Writes ``<out>/pairs/<pair>/seed<s>.json``; returns one line of progress."""
    import warnings

    sys.path[:0] = [str(HERE)]
    warnings.filterwarnings("ignore")
    import optuna
    import torch
    from arms import ARMS, Arm, run_arm
    from retrain import Retrainer, check_fresh, fresh_seeds, retrained_choice
    from search_tasks import ALL_TASKS

    from lrsearch.config.spec import spec_from_dict
    from lrsearch.training.prepared import prepare

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(1)
    pair = PAIRS[pair_name]
    source, target = ALL_TASKS[pair.source], ALL_TASKS[pair.target]
    path = Path(out) / "pairs" / pair_name / f"seed{seed}.json"
    export = path.with_name(f"seed{seed}-source.json").resolve()
    doc = json.loads(path.read_text()) if path.exists() and not fresh else {}
    if doc.get("format") != 2:
        doc = {"format": 2, "pair": pair_name, "seed": seed, "source": pair.source, "target": pair.target,
               "change": pair.change, "metric": target.metric, "direction": target.direction,
               "epochs": target.epochs, "arms": {}, "retrained": {}}

    def save() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))

    done, notes = [], []
    if "source" not in doc["arms"] or not export.exists():
        source_study = source.study(seed)
        result = run_arm(ARMS["lrsearch"], source_study, prepare(spec_from_dict(source_study)), export_to=export)
        if isinstance(result, str):  # the default search always runs; a study file it rejects is the bench's bug
            raise RuntimeError(result)
        doc["arms"]["source"] = result | {"arm": "source"}
        save()
        done.append(f"source {result['wall_seconds']:.0f}s")
    study = target.study(seed)
    prepared = prepare(spec_from_dict(study))
    arms = {"cold": ARMS["lrsearch"], "warm": Arm("warm", search={"warm_start": [str(export)]})}
    for name, arm in arms.items():
        if name in doc["arms"]:
            continue
        result = run_arm(arm, study, prepared)
        if isinstance(result, str):
            notes.append(result)
            continue
        doc["arms"][name] = result | {"arm": name}
        save()
        done.append(f"{name} {result['wall_seconds']:.0f}s")
    seeds = fresh_seeds(seed, retrain)
    check_fresh(doc, seeds)
    doc["fresh_seeds"], doc["anytime"] = seeds, {}
    retrainer = Retrainer(prepared, doc["retrained"], save)
    maximize = target.direction == "maximize"
    for name in ("cold", "warm"):
        if name in doc["arms"]:
            doc["anytime"][name] = {str(n): pick for n in PREFIXES if (
                pick := retrained_choice(doc["arms"][name], arms[name], n, maximize, retrainer, seeds))}
    doc["skipped"] = notes
    save()
    done.append(f"{retrainer.trained} retrained")
    return f"pair {pair_name} seed {seed}: {', '.join(done)}" + "".join(f"\n    note: {n}" for n in notes)
