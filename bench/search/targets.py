"""The targets of lrsearch's default (issue 23), each on the retrained value, and the statistics they read.

Per task, over search seeds: an arm's **retrained mean** is the mean over search seeds of the mean of its returned
configuration's retrained values (a diverged retrain counts as the worst value: the mean is then infinite); its
**spread** is the standard deviation (ddof 1) of those per-seed means; its **optimism** is recorded minus retrained,
signed so that positive means the record flattered (for a loss: retrained - recorded).

- **T-win**: on a task, the default's retrained mean is at least every compared arm's at 25 trials (random@25,
  optuna-oob, syne-tune-asha, textbook, lrsearch-confirm-2x1: those that ran; random@100 is reported, not
  compared).
  It holds for the suite on at least 5/7 of the base tasks that ran, rounded up: 5 of the 7, 3 of 3, 2 of 2 (on
  ``--quick``'s tasks: every one). :func:`win_counts` scores every compared arm the same way, against the others
  and the default: where no arm meets the target either, it asks more than any compared search reaches.
- **T-textbook**: on every task the default is not below the textbook arm by more than the textbook's own seed
  spread: the standard deviation of the retrained values, pooled over all fresh seeds of every search seed, of
  the textbook configuration with the best retrained mean.
- **T-epochs**: on every task the default spends at most half the epochs of 25 full trials (mean over seeds).
- **T-optimism**: on every task the default's optimism is at most half of random@25's, or, where half of
  random@25's is below the standard error of the default's optimism (over search seeds), at most that standard
  error: an optimism the seeds cannot tell from zero (so a random@25 that the record does not flatter asks for a
  default that it does not flatter either). A retrain of random@25's choice that diverges makes its optimism
  infinite: any finite optimism of the default holds.
- **T-warm**: on every pair the warm-started target's choice reaches the cold study's final retrained mean (at the
  first of 1, 2, 5, 10, 25 trials where its retrained mean is no worse) within a third of the cold study's epochs.
- **T-reproduce** (a check of the bench itself): a trial retrained on its own seed gives its recorded value, bit for
  bit, in every job: otherwise retrained values do not measure what the studies trained.

The targets count the base tasks (``search_tasks.TASKS``) and the pairs. Two measurements beside them are not
targets: on the **family tasks** (``search_tasks.FAMILY_TASKS``), which optimizer the default returns and its gain
over ``tuned-adamw`` (:func:`summarise_families`); on every task, each **confirmation setting**'s gain over the
default without confirmation (:func:`summarise_confirmation`). A gain is signed so that positive means the first
arm is better; its spread is the standard deviation of the per-seed gains.

Ties: "at least as good" compares means rounded to 4 significant digits (:func:`no_worse`), a resolution the seeds'
noise is far coarser than, so a configuration both arms return counts as a tie, not as a loss by rounding error.
"""

from __future__ import annotations

import collections
import math
import statistics
from typing import Any

DEFAULT = "lrsearch"
COMPARED = ("random@25", "textbook", "optuna-oob", "syne-tune-asha", "lrsearch-confirm-2x1")
"""The arms T-win compares the default with: every arm at 25 trials."""
ABLATIONS = {"lrsearch-epochs-1": "epoch_budget 1", "lrsearch-keep-half": "keep 1/2",
             "lrsearch-rung-third": "rungs 1/3, 2/3", "lrsearch-prior-half": "prior_share 1/2",
             "lrsearch-uniform-quarter": "uniform_share 1/4", "prior-no-pruning": "no pruning"}
"""Variants of the default, one setting changed each (arms of ``arms.ARMS``, run with ``run.py
--arms``), by their label in the report."""
ORDER = (DEFAULT, "lrsearch-no-confirm", "lrsearch-confirm-2x1", "lrsearch-confirm-3x1", "lrsearch-confirm-1x2",
         "tuned-adamw", "random@12", "random@25", "random@100", "textbook", "optuna-oob", "syne-tune-asha",
         "lrsearch-0.1", *ABLATIONS)
TUNED_ADAMW = "tuned-adamw"
NO_CONFIRM = DEFAULT
"""The default confirms nothing (``search.confirm: none``; until 2026-12-02 it confirmed 2 x 1)."""
CONFIRM_SETTINGS = {"lrsearch-confirm-2x1": "2 x 1 (auto)", "lrsearch-confirm-3x1": "3 x 1",
                    "lrsearch-confirm-1x2": "1 x 2"}
"""The arms that confirm (configurations x new seeds), each compared with the default (no confirmation)."""
WIN_SHARE = 5 / 7
WARM_SHARE = 1 / 3
EPOCH_SHARE = 0.5
FULL_TRIALS = 25
"""Epochs are counted as a share of this many full trials."""


def rounded(value: float) -> float:
    return float(f"{value:.4g}") if math.isfinite(value) else value


def no_worse(a: float, b: float, maximize: bool) -> bool:
    """``a`` at least as good as ``b`` at 4 significant digits."""
    a, b = rounded(a), rounded(b)
    return a >= b if maximize else a <= b


def worst(maximize: bool) -> float:
    return -math.inf if maximize else math.inf


def mean_of(values: list[float | None], maximize: bool) -> float:
    """The mean, a missing (diverged) value counting as the worst."""
    filled = [worst(maximize) if v is None else v for v in values]
    return statistics.fmean(filled) if filled else math.nan


def std_of(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.stdev(finite) if len(finite) >= 2 and len(finite) == len(values) else math.nan


def flattery(recorded: float, retrained: float, maximize: bool) -> float:
    """Recorded minus retrained, positive when the record flattered."""
    return recorded - retrained if maximize else retrained - recorded


def summarise_views(docs: list[dict[str, Any]], maximize: bool, epochs: int) -> dict[str, dict[str, Any]]:
    """Per view (``doc["choices"]``): seeds, retrained mean and spread, recorded mean, optimism and its standard
    error, epochs as a share of 25 full trials, wall seconds; the per-seed retrained means for paired counts."""
    names = sorted({v for d in docs for v in d.get("choices", {})},
                   key=lambda v: (ORDER.index(v) if v in ORDER else len(ORDER), v))
    out = {}
    for name in names:
        picks = [(d["seed"], d["choices"][name]) for d in docs if name in d.get("choices", {})]
        per_seed = [mean_of(p["retrained"], maximize) for _, p in picks]
        optimism = [flattery(p["recorded"], r, maximize) for (_, p), r in zip(picks, per_seed, strict=True)]
        out[name] = {
            "seeds": [s for s, _ in picks],
            "retrained": statistics.fmean(per_seed),
            "spread": std_of(per_seed),
            "recorded": statistics.fmean(p["recorded"] for _, p in picks),
            "optimism": statistics.fmean(optimism),
            "optimism_se": std_of(optimism) / math.sqrt(len(optimism)) if len(optimism) > 1 else math.nan,
            "epochs": statistics.fmean(p["epochs"] for _, p in picks) / (FULL_TRIALS * epochs),
            "wall": statistics.fmean(p["wall_seconds"] for _, p in picks),
            "per_seed": dict(zip([s for s, _ in picks], per_seed, strict=True)),
            "diverged": sum(v is None for _, p in picks for v in p["retrained"]),
            "retrains": sum(len(p["retrained"]) for _, p in picks),
        }
    return out


def gain(a: float, b: float, maximize: bool) -> float:
    """How much better ``a`` is than ``b``: positive when ``a`` is better."""
    return a - b if maximize else b - a


def paired_gain(ours: dict[int, float], theirs: dict[int, float], maximize: bool) -> dict[str, Any]:
    """Two arms' per-seed retrained means, seed by seed on the seeds both ran: the mean gain of ``ours`` (positive:
    ours better), the standard deviation of the per-seed gains (the spread) and wins / losses / ties."""
    common = sorted(s for s in ours if s in theirs)
    gains = [gain(ours[s], theirs[s], maximize) for s in common]
    ties = sum(no_worse(ours[s], theirs[s], maximize) and no_worse(theirs[s], ours[s], maximize) for s in common)
    wins = sum(no_worse(ours[s], theirs[s], maximize) for s in common) - ties
    return {"seeds": common, "gain": statistics.fmean(gains) if gains else math.nan, "spread": std_of(gains),
            "per_seed": dict(zip(common, gains, strict=True)), "wins": wins, "losses": len(common) - wins - ties,
            "ties": ties}


def summarise_families(docs: list[dict[str, Any]], views: dict[str, Any], maximize: bool) -> dict[str, Any] | None:
    """Issue 22's question on a task that searches several optimizer families: which family (optimizer) the
    default's returned configuration uses on each search seed, and its retrained mean minus tuned AdamW's (the
    default restricted to AdamW), positive when the default is better; None where either did not run."""
    if DEFAULT not in views or TUNED_ADAMW not in views:
        return None
    families = {d["seed"]: d["choices"][DEFAULT]["config"]["optimizer"] for d in docs
                if DEFAULT in d.get("choices", {})}
    return {"families": families, "counts": dict(collections.Counter(families.values()).most_common()),
            "default": views[DEFAULT]["retrained"], "tuned_adamw": views[TUNED_ADAMW]["retrained"],
            **paired_gain(views[DEFAULT]["per_seed"], views[TUNED_ADAMW]["per_seed"], maximize)}


def summarise_confirmation(views: dict[str, Any], maximize: bool) -> dict[str, Any]:
    """Each confirmation setting that ran against the default without confirmation (issue 23, item 2): its retrained
    mean, the paired gain over no confirmation (positive: confirming better), its spread, W / L / T, epochs."""
    if NO_CONFIRM not in views:
        return {}
    base = views[NO_CONFIRM]
    return {name: {"setting": setting, "retrained": views[name]["retrained"], "epochs": views[name]["epochs"],
                   "no_confirm": base["retrained"], "no_confirm_epochs": base["epochs"],
                   **paired_gain(views[name]["per_seed"], base["per_seed"], maximize)}
            for name, setting in CONFIRM_SETTINGS.items() if name in views}


def summarise_textbook(docs: list[dict[str, Any]], maximize: bool) -> dict[str, dict[str, Any]]:
    """Per textbook configuration: its retrained values pooled over every fresh seed of every search seed, their
    mean and standard deviation (the configuration's own seed spread) and its mean recorded value."""
    out: dict[str, dict[str, Any]] = {}
    for doc in docs:
        for label, entry in doc.get("textbook_configs", {}).items():
            pooled = out.setdefault(label, {"values": [], "recorded": []})
            pooled["values"] += [worst(maximize) if v is None else v for v in entry["retrained"]]
            pooled["recorded"].append(worst(maximize) if entry["recorded"] is None else entry["recorded"])
    return {label: {"retrained": statistics.fmean(p["values"]), "spread": std_of(p["values"]),
                    "values": len(p["values"]), "recorded": statistics.fmean(p["recorded"])}
            for label, p in out.items()}


def summarise_anytime(docs: list[dict[str, Any]], maximize: bool, epochs: int) -> dict[str, Any]:
    """Per arm and trial count: the retrained mean of its choice after that many trials and the epochs spent
    (share of 25 full trials), over the search seeds that retrained it."""
    out: dict[str, Any] = {}
    for doc in docs:
        for arm, by_n in doc.get("anytime", {}).items():
            for n, pick in by_n.items():
                cell = out.setdefault(arm, {}).setdefault(n, {"values": [], "epochs": [], "seeds": []})
                cell["values"].append(mean_of(pick["retrained"], maximize))
                cell["epochs"].append(pick["epochs"] / (FULL_TRIALS * epochs))
                cell["seeds"].append(doc["seed"])
    return {arm: {n: {"retrained": statistics.fmean(c["values"]), "epochs": statistics.fmean(c["epochs"]),
                      "seeds": c["seeds"]} for n, c in sorted(by_n.items(), key=lambda kv: int(kv[0]))}
            for arm, by_n in out.items()}


def task_targets(views: dict[str, Any], textbook: dict[str, Any], maximize: bool) -> dict[str, Any]:
    """The per-task targets (None where an arm they need did not run) and what each read."""
    ours = views.get(DEFAULT)
    if ours is None:
        return {}
    compared = [name for name in COMPARED if name in views]
    beaten_by = [name for name in compared if not no_worse(ours["retrained"], views[name]["retrained"], maximize)]
    out: dict[str, Any] = {"T-win": not beaten_by if compared else None, "beaten_by": beaten_by,
                           "compared": compared, "T-epochs": ours["epochs"] <= EPOCH_SHARE}
    if "textbook" in views and textbook:
        best = (max if maximize else min)(textbook.values(), key=lambda t: t["retrained"])
        spread = best["spread"] if math.isfinite(best["spread"]) else 0.0
        floor = views["textbook"]["retrained"] + (-spread if maximize else spread)
        out |= {"T-textbook": no_worse(ours["retrained"], floor, maximize), "textbook_spread": spread,
                "textbook_floor": floor}
    else:
        out["T-textbook"] = None
    if "random@25" in views:
        se = ours["optimism_se"] if math.isfinite(ours["optimism_se"]) else 0.0
        limit = max(views["random@25"]["optimism"] / 2, se)
        out |= {"T-optimism": rounded(ours["optimism"]) <= rounded(limit), "optimism_limit": limit}
    else:
        out["T-optimism"] = None
    return out


def win_counts(summaries: dict[str, Any]) -> dict[str, list[str]]:
    """T-win scored the same way for every arm it compares, the default among them: per arm, the tasks where its
    retrained mean is at least every other's. Whether any arm, not only the default, meets 5 of 7."""
    arms = (DEFAULT, *COMPARED)
    return {arm: [task for task, s in summaries.items() if arm in s["views"]
                  and all(no_worse(s["views"][arm]["retrained"], s["views"][other]["retrained"], s["maximize"])
                          for other in arms if other != arm and other in s["views"])]
            for arm in arms if any(arm in s["views"] for s in summaries.values())}


def summarise_ablations(summaries: dict[str, Any]) -> dict[str, Any]:
    """Per variant of the default (:data:`ABLATIONS`) and base task: its retrained mean and epochs, its paired
    gain over the default, and whether T-win would hold with it in the default's place (against the same arms)."""
    out: dict[str, Any] = {}
    for arm in ABLATIONS:
        for task, s in summaries.items():
            views, maximize = s["views"], s["maximize"]
            if arm not in views or DEFAULT not in views:
                continue
            v = views[arm]
            beaten_by = [n for n in COMPARED if n in views and not no_worse(v["retrained"], views[n]["retrained"],
                                                                             maximize)]
            out.setdefault(arm, {})[task] = {
                **paired_gain(v["per_seed"], views[DEFAULT]["per_seed"], maximize),
                "retrained": v["retrained"], "epochs": v["epochs"], "t_win": not beaten_by, "beaten_by": beaten_by}
    return out


def summarise_pair(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Cold and warm: per trial count, the retrained mean of the target's choice and its epochs (share of 25 full
    trials); T-warm: where the warm choice first reaches the cold study's final retrained mean, and at what cost."""
    first = docs[0]
    maximize, epochs = first["direction"] == "maximize", first["epochs"]
    arms = {name: summarise_anytime([{**d, "anytime": {name: d.get("anytime", {}).get(name, {})}} for d in docs],
                                    maximize, epochs).get(name, {}) for name in ("cold", "warm")}
    out = {"pair": first["pair"], "source": first["source"], "target": first["target"], "change": first["change"],
           "metric": first["metric"], "maximize": maximize, "epochs": epochs, "seeds": [d["seed"] for d in docs],
           "cold": arms["cold"], "warm": arms["warm"], "T-warm": None, "reached_at": None,
           "skipped": sorted({n for d in docs for n in d.get("skipped", [])})}
    if arms["cold"] and arms["warm"]:
        final = arms["cold"][max(arms["cold"], key=int)]
        budget = final["epochs"] * WARM_SHARE
        reached = next((n for n, cell in arms["warm"].items()
                        if no_worse(cell["retrained"], final["retrained"], maximize)), None)
        out |= {"reached_at": reached, "cold_final": final["retrained"], "warm_budget": budget,
                "T-warm": reached is not None and arms["warm"][reached]["epochs"] <= budget}
    return out


def suite_targets(tasks: dict[str, dict[str, Any]], pairs: dict[str, dict[str, Any]],
                  reproduced: list[bool]) -> dict[str, bool | None]:
    """The suite's verdict on what ran: T-win on enough base tasks, the per-task targets on every task, T-warm on
    every pair, and the bench's own check. A target that ran but could not be measured is None (not held)."""
    out: dict[str, bool | None] = {}
    measured = {name: s for name, s in tasks.items() if s["targets"]}
    if measured:
        wins = [s["targets"]["T-win"] for s in measured.values()]
        need = math.ceil(WIN_SHARE * len(wins) - 1e-9)
        out["T-win"] = None if None in wins else sum(wins) >= need
        for name in ("T-textbook", "T-epochs", "T-optimism"):
            values = [s["targets"][name] for s in measured.values()]
            out[name] = None if None in values else all(values)
    elif tasks:
        out["T-win"] = None  # the default did not run
    if pairs:
        values = [p["T-warm"] for p in pairs.values()]
        out["T-warm"] = None if None in values else all(values)
    if reproduced:
        out["T-reproduce"] = all(reproduced)
    return out
