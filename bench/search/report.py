"""The search benchmark's report: per task, what each arm's returned configuration retrains to (the headline), the
anytime view (its choice after 5, 10, 25 trials, retrained), each textbook configuration retrained, and, secondary,
the recorded best-of-N of issue 13; per warm-start pair, cold against warm; the targets (``targets.py``, on the base
tasks and pairs) and a plot per task of the recorded best so far against trials. Beside them: the confirmation
settings against no confirmation, and, on the family tasks, which optimizer family the default returns and by how
much it beats tuned AdamW (``families`` in ``summary.json``).

    python bench/search/report.py [--results bench/results/search]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from search_tasks import FAMILY_TASKS
from tables import ablations_markdown, confirmation_markdown, families_markdown, fmt, wlt
from targets import (
    DEFAULT,
    ORDER,
    paired_gain,
    suite_targets,
    summarise_ablations,
    summarise_anytime,
    summarise_confirmation,
    summarise_families,
    summarise_pair,
    summarise_textbook,
    summarise_views,
    task_targets,
    win_counts,
)

VERDICT = {True: "held", False: "MISSED", None: "n/a (not measured)"}


def load(results: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
    """Every job file of the retrained suite (format 2), by task and by pair."""
    tasks: dict[str, list[dict[str, Any]]] = {}
    pairs: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(results.glob("*/seed*.json")):
        doc = json.loads(path.read_text())
        if doc.get("format") == 2 and "task" in doc:
            tasks.setdefault(doc["task"], []).append(doc)
    for path in sorted(results.glob("pairs/*/seed*.json")):
        doc = json.loads(path.read_text())
        if doc.get("format") == 2 and "pair" in doc:
            pairs.setdefault(doc["pair"], []).append(doc)
    return tasks, pairs


def curve(trials: list[dict[str, Any]], maximize: bool) -> list[float]:
    """The best complete value after each trial (a pruned or diverged trial is never best); the worst value until
    a trial completes."""
    best, out = -math.inf if maximize else math.inf, []
    for trial in trials:
        value = trial["value"]
        if value is not None and math.isfinite(value) and (value > best if maximize else value < best):
            best = value
        out.append(best)
    return out


def recorded_best(docs: list[dict[str, Any]], maximize: bool) -> dict[str, Any]:
    """Issue 13's secondary view: per arm, the median over seeds of the best recorded value after 10 and 25 trials
    (random: 100 too), and the curves for the plot."""
    out: dict[str, Any] = {}
    order = [a.split("@")[0] for a in ORDER]
    for name in sorted({a for d in docs for a in d["arms"]}, key=lambda a: order.index(a) if a in order else 99):
        curves = [curve(d["arms"][name]["trials"], maximize) for d in docs if name in d["arms"]]
        at = {n: float(np.median([c[min(n, len(c)) - 1] for c in curves if c])) for n in (10, 25, 100)
              if n <= max(25, *(len(c) for c in curves))}
        out[name] = {"at": at, "curves": curves}
    return out


def summarise(task: str, docs: list[dict[str, Any]]) -> dict[str, Any]:
    first = docs[0]
    maximize, epochs = first["direction"] == "maximize", first["epochs"]
    views = summarise_views(docs, maximize, epochs)
    textbook = summarise_textbook(docs, maximize)
    return {"task": task, "maximize": maximize, "epochs": epochs, "holdout": first.get("holdout", False),
            "family": task in FAMILY_TASKS, "metric": first["metric"], "seeds": sorted(d["seed"] for d in docs),
            "fresh": max(len(d.get("fresh_seeds", [])) for d in docs), "views": views, "textbook": textbook,
            "anytime": summarise_anytime(docs, maximize, epochs), "recorded_best": recorded_best(docs, maximize),
            "skipped": sorted({n for d in docs for n in d.get("skipped", [])}),
            "targets": task_targets(views, textbook, maximize),
            "families": summarise_families(docs, views, maximize),
            "confirmation": summarise_confirmation(views, maximize)}


def _paired(views: dict[str, Any], maximize: bool, name: str) -> str:
    """The default against ``name``, seed by seed on the per-seed retrained means: wins / losses / ties."""
    return wlt(paired_gain(views[DEFAULT]["per_seed"], views[name]["per_seed"], maximize))


def markdown(s: dict[str, Any]) -> str:
    arrow = "higher" if s["maximize"] else "lower"
    lines = [f"### {s['task']}{' (held out)' if s['holdout'] else ''}: {s['metric']}, {arrow} is better; "
             f"{s['epochs']} epochs a trial; search seeds {s['seeds']}; each choice retrained on {s['fresh']} fresh "
             "seeds", "",
             "| arm | retrained mean | spread (std over search seeds) | recorded | optimism | epochs / 25 full | "
             "wall s | default W / L / T |", "|---|---|---|---|---|---|---|---|"]
    for name, v in s["views"].items():
        paired = _paired(s["views"], s["maximize"], name) if name != DEFAULT and DEFAULT in s["views"] else ""
        label = f"**{name}**" if name == DEFAULT else name
        diverged = f" ({v['diverged']} of {v['retrains']} retrains)" if v["diverged"] else ""
        lines.append(f"| {label} | **{fmt(v['retrained'])}**{diverged} | {fmt(v['spread'])} | "
                     f"{fmt(v['recorded'])} | {fmt(v['optimism'])} | {v['epochs']:.2f} | {v['wall']:.1f} | "
                     f"{paired} |")
    if s["targets"]:
        counted = " (not counted: a family task)" if s["family"] else ""
        lines += ["", f"Targets{counted}: " + "; ".join(_task_verdicts(s))]
    for note in s["skipped"]:
        lines.append(f"Note: {note}")
    if s["textbook"]:
        lines += ["", "Each textbook configuration, retrained (values pooled over every fresh seed):", "",
                  "| configuration | retrained mean | seed spread (std) | values | recorded mean |",
                  "|---|---|---|---|---|"]
        lines += [f"| {label} | {fmt(c['retrained'])} | {fmt(c['spread'])} | {c['values']} | {fmt(c['recorded'])} |"
                  for label, c in s["textbook"].items()]
    if s["anytime"]:
        counts = sorted({int(n) for by_n in s["anytime"].values() for n in by_n})
        seeds = sorted({x for by_n in s["anytime"].values() for c in by_n.values() for x in c["seeds"]})
        lines += ["", f"Anytime: the retrained mean of each arm's choice after n trials (epochs / 25 full), search "
                  f"seeds {seeds}:", "", "| arm | " + " | ".join(f"@{n}" for n in counts) + " |",
                  "|---|" + "---|" * len(counts)]
        for arm, by_n in s["anytime"].items():
            cells = [f"{fmt(by_n[str(n)]['retrained'])} ({by_n[str(n)]['epochs']:.2f})" if str(n) in by_n else ""
                     for n in counts]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "Secondary: the best recorded value after n trials (median over search seeds; what issue 13 "
              "measured):", "", "| arm | best@10 | best@25 | best@100 |", "|---|---|---|---|"]
    for arm, r in s["recorded_best"].items():
        lines.append(f"| {arm} | " + " | ".join(fmt(r["at"].get(n)) for n in (10, 25, 100)) + " |")
    return "\n".join([*lines, ""])


def _task_verdicts(s: dict[str, Any]) -> list[str]:
    """Each per-task target's verdict with the numbers it compared."""
    t, ours = s["targets"], s["views"][DEFAULT]
    side = ">=" if s["maximize"] else "<="
    out = [f"T-win {VERDICT[t['T-win']]}" + (f" (beaten by {', '.join(_margin(s, a) for a in t['beaten_by'])})"
                                             if t["beaten_by"] else f" (against {', '.join(t['compared'])})")]
    if "textbook_floor" in t:
        out.append(f"T-textbook {VERDICT[t['T-textbook']]} ({fmt(ours['retrained'])} {side} textbook "
                   f"{fmt(s['views']['textbook']['retrained'])} {'-' if s['maximize'] else '+'} its seed spread "
                   f"{fmt(t['textbook_spread'])})")
    out.append(f"T-epochs {VERDICT[t['T-epochs']]} ({ours['epochs']:.2f} <= 0.50)")
    if "optimism_limit" in t:
        limit = (fmt(t["optimism_limit"]) if math.isfinite(t["optimism_limit"]) else
                 "no limit: a retrain of random@25's choice diverged")
        out.append(f"T-optimism {VERDICT[t['T-optimism']]} ({fmt(ours['optimism'])} <= {limit})")
    return out


def _margin(s: dict[str, Any], arm: str) -> str:
    """How far ``arm`` is ahead of the default, seed by seed: the mean gain, its standard error and t (a t near 1 or
    below is within the seeds' noise; about 2.3 is the two-sided 5% level at 10 seeds)."""
    paired = paired_gain(s["views"][arm]["per_seed"], s["views"][DEFAULT]["per_seed"], s["maximize"])
    n, mean, spread = len(paired["seeds"]), paired["gain"], paired["spread"]
    if n < 2 or not (math.isfinite(mean) and math.isfinite(spread)) or spread == 0:
        return arm
    se = spread / math.sqrt(n)
    return f"{arm} by {fmt(mean)} ± {fmt(se)}, t = {mean / se:.1f}"


def pair_markdown(p: dict[str, Any]) -> str:
    lines = [f"### {p['pair']}: {p['change']} ({p['source']} -> {p['target']}, {p['metric']}, "
             f"{'higher' if p['maximize'] else 'lower'} is better; search seeds {p['seeds']})", ""]
    if p["cold"]:
        counts = sorted({int(n) for arm in ("cold", "warm") for n in p[arm]}, key=int)
        lines += ["| trials | cold: retrained mean | cold: epochs / 25 full | warm: retrained mean | "
                  "warm: epochs / 25 full |", "|---|---|---|---|---|"]
        for n in counts:
            cold, warm = p["cold"].get(str(n)), p["warm"].get(str(n))
            lines.append(f"| {n} | {fmt(cold and cold['retrained'])} | {_share(cold)} | "
                         f"{fmt(warm and warm['retrained'])} | {_share(warm)} |")
    reach = (f"warm reaches the cold final {fmt(p['cold_final'])} after {p['reached_at']} trials "
             f"({p['warm'][p['reached_at']]['epochs']:.2f} of 25 full trials' epochs; a third of cold's: "
             f"{p['warm_budget']:.2f})" if p.get("reached_at") else
             f"warm does not reach the cold final {fmt(p['cold_final'])}" if "cold_final" in p else "not measured")
    lines += ["", f"T-warm {VERDICT[p['T-warm']]}: {reach}", *[f"Note: {n}" for n in p["skipped"]]]
    return "\n".join([*lines, ""])


def _share(cell: dict[str, Any] | None) -> str:
    return "-" if cell is None else f"{cell['epochs']:.2f}"


def plot(summary: dict[str, Any], path: Path) -> None:
    """Recorded best so far against trials: the median over seeds and the interquartile band, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    shown: list[float] = []  # medians and lower quartiles from the 4th trial on: the first trials would squash the rest
    for index, (name, arm) in enumerate(summary["recorded_best"].items()):
        length = min(len(c) for c in arm["curves"])
        if length < 2:
            continue
        values = np.array([c[:length] for c in arm["curves"]], dtype=float)
        values[~np.isfinite(values)] = np.nan
        q1, median, q3 = np.nanpercentile(values, [25, 50, 75], axis=0)
        x = np.arange(1, length + 1)
        axes.plot(x, median, color=f"C{index}", label=name, linewidth=2 if name == DEFAULT else 1.2)
        axes.fill_between(x, q1, q3, color=f"C{index}", alpha=0.15)
        shown += [v for v in (*q1[3:], *median[3:]) if math.isfinite(v)]
    if shown:
        low, high = min(shown), max(shown)
        axes.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
    axes.set(xscale="log", xlabel="trials", ylabel=f"best recorded {summary['metric']} so far",
             title=f"{summary['task']}: median and interquartile range over seeds")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def report(results: Path, tasks: list[str] | None = None,
           pairs: list[str] | None = None) -> tuple[str, dict[str, Any]]:
    """The markdown report of what ``results`` holds (only ``tasks`` and ``pairs`` when given), with a plot per
    task beside it; returns the text and the suite (summaries and targets), also written as ``summary.json``."""
    task_docs, pair_docs = load(results)
    task_docs = {t: d for t, d in task_docs.items() if tasks is None or t in tasks}
    pair_docs = {p: d for p, d in pair_docs.items() if pairs is None or p in pairs}
    summaries = {task: summarise(task, docs) for task, docs in sorted(task_docs.items())}
    summaries = dict(sorted(summaries.items(), key=lambda kv: kv[1]["family"]))  # base tasks first
    base = {task: s for task, s in summaries.items() if not s["family"]}
    pair_summaries = {pair: summarise_pair(docs) for pair, docs in sorted(pair_docs.items())}
    reproduced = [d["reproduce"]["equal"] for docs in task_docs.values() for d in docs if d.get("reproduce")]
    suite = suite_targets(base, pair_summaries, reproduced)
    wins = [t for t, s in base.items() if s["targets"].get("T-win")]
    rows = ["| target | verdict | where |", "|---|---|---|"]
    details = {
        "T-win": f"default >= every arm at 25 trials on {len(wins)} of {len(base)} base tasks "
                 f"({', '.join(wins) or 'none'}); needs 5/7 of them, rounded up. Each compared arm scored the same "
                 "way: " + ", ".join(f"{a} {len(ts)}" for a, ts in win_counts(base).items() if a != DEFAULT),
        "T-textbook": _where(base, "T-textbook"), "T-epochs": _where(base, "T-epochs"),
        "T-optimism": _where(base, "T-optimism"),
        "T-warm": ", ".join(f"{p} {VERDICT[s['T-warm']]}" for p, s in pair_summaries.items()),
        "T-reproduce": f"{sum(reproduced)} of {len(reproduced)} jobs: a trial retrained on its own seed gives its "
                       "recorded value",
    }
    rows += [f"| {name} | {VERDICT[held]} | {details[name]} |" for name, held in suite.items()]
    machine = results / "machine.json"
    ran_on = json.loads(machine.read_text()) if machine.exists() else {}
    parts = ["# The search benchmark: what each arm's returned configuration retrains to", ""]
    if ran_on:
        parts += [f"Last run on {ran_on['cpu']}, {ran_on['cores_usable']} usable cores, load average "
                  f"{ran_on['load_average_1_5_15']}, torch {ran_on['torch']}, optuna {ran_on['optuna']}, lrsearch "
                  f"{ran_on['lrsearch']}; {ran_on['date']}.", ""]
    parts += ["Retrained mean: the mean over search seeds of the mean of the returned configuration's values on fresh "
              "seeds no arm trained with (the same for every arm). Spread: std of the per-seed means over search "
              "seeds. Optimism: recorded minus retrained, positive when the record flattered. Default W / L / T: "
              "lrsearch's default against the arm, seed by seed. Definitions and targets: bench/search/targets.py.",
              "", "## Targets of lrsearch's default (base tasks and pairs)", "", *rows, ""]
    families = {task: s["families"] for task, s in summaries.items() if s["families"]}
    confirmation = {task: s["confirmation"] for task, s in summaries.items() if s["confirmation"]}
    ablations = summarise_ablations(base)
    parts += [*families_markdown(families, summaries), *confirmation_markdown(confirmation, summaries),
              *ablations_markdown(ablations, base)]
    for task, summary in summaries.items():
        if summary["family"] and task == next(t for t, s in summaries.items() if s["family"]):
            parts += ["## Family tasks (not counted in the targets)", ""]
        plot(summary, results / f"{task}.png")
        parts.append(markdown(summary))
    if pair_summaries:
        parts += ["## Warm-start pairs: the target study cold and warm-started from the source study's answer", ""]
        parts += [pair_markdown(p) for p in pair_summaries.values()]
    text = "\n".join(parts)
    (results / "REPORT.md").write_text(text)
    out = {"targets": suite, "tasks": {t: {k: v for k, v in s.items() if k != "recorded_best"}
                                       | {"recorded_best": {a: r["at"] for a, r in s["recorded_best"].items()}}
                                       for t, s in summaries.items()}, "pairs": pair_summaries,
           "families": families, "confirmation": confirmation, "ablations": ablations, "win_counts": win_counts(base)}
    (results / "summary.json").write_text(json.dumps(_jsonable(out), indent=1))
    return text, out


def _where(summaries: dict[str, Any], target: str) -> str:
    return ", ".join(f"{t} {VERDICT[s['targets'].get(target)]}" for t, s in summaries.items())


def _jsonable(value: Any) -> Any:
    """JSON has no Infinity or NaN: such values are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "search")
    print(report(parser.parse_args().results)[0])


if __name__ == "__main__":
    main()
