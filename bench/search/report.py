"""The search benchmark's report: per task, the median and interquartile range over seeds of each arm's best
objective after 10 and 25 trials (random search also after 100), the epochs it spent, its wall time, the targets
lrsearch's default meets, and a plot of the best so far against trials.

Targets (issue 13), per task, medians over seeds:
- **T25**: lrsearch's best after 25 trials is at least as good as random search's after 100 (no pruning);
- **T10**: after 10 trials it is at least as good as the best textbook default and as random search after 25;
- **Tep**: it spends at most half the epochs of 25 full trials.

    python bench/search/report.py [--results bench/results/search]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

ORDER = ("lrsearch", "textbook", "random", "optuna-oob", "lrsearch-0.1", "prior-no-pruning", "syne-tune-asha")


def load(results: Path) -> dict[str, list[dict[str, Any]]]:
    """Every job file, by task."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(results.glob("*/seed*.json")):
        doc = json.loads(path.read_text())
        out.setdefault(doc["task"], []).append(doc)
    return out


def curve(trials: list[dict[str, Any]], maximize: bool) -> list[float]:
    """The best complete value after each trial (a pruned or diverged trial is never best); the worst value until
    a trial completes."""
    best, out = math.inf if not maximize else -math.inf, []
    for trial in trials:
        value = trial["value"]
        if value is not None and math.isfinite(value) and (value > best if maximize else value < best):
            best = value
        out.append(best)
    return out


def best_at(values: list[float], n: int, maximize: bool) -> float:
    if not values:
        return -math.inf if maximize else math.inf
    return values[min(n, len(values)) - 1]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values) / 2:  # most seeds found nothing
        worst = values[0]
        return worst, worst, worst
    q1, median, q3 = np.percentile(np.array(values, dtype=float), [25, 50, 75], method="median_unbiased")
    return float(q1), float(median), float(q3)


def summarise(task: str, docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm: quartiles of best@10, best@25 (random: best@100 too), epochs as a share of 25 full trials, wall."""
    maximize = docs[0]["direction"] == "maximize"
    epochs = docs[0]["epochs"]
    arms: dict[str, Any] = {}
    for name in [a for a in ORDER if any(a in d["arms"] for d in docs)]:
        runs = [d["arms"][name] for d in docs if name in d["arms"]]
        curves = [curve(r["trials"], maximize) for r in runs]
        arms[name] = {
            "seeds": len(runs),
            "at10": quartiles([best_at(c, 10, maximize) for c in curves]),
            "at25": quartiles([best_at(c, 25, maximize) for c in curves]),
            "at100": quartiles([best_at(c, 100, maximize) for c in curves]) if name == "random" else None,
            "epochs": float(np.median([sum(t["epochs"] for t in r["trials"][:25]) / (25 * epochs) for r in runs])),
            "wall": float(np.median([r["wall_seconds"] for r in runs])),
            "curves": curves,
        }
    if "random" in arms:
        for arm in arms.values():
            arm["random_equivalent"] = random_equivalent(arms["random"]["curves"], arm["at25"][1], maximize)
    return {"task": task, "maximize": maximize, "epochs": epochs, "holdout": docs[0].get("holdout", False),
            "metric": docs[0]["metric"], "arms": arms, "targets": targets(arms, maximize)}


def random_equivalent(random_curves: list[list[float]], value: float, maximize: bool) -> int | None:
    """How many trials random search needs for its median best to be as good as ``value`` (None: not within the
    trials it ran). An arm's best@25 worth random@100 or more is 4x as sample-efficient as random search."""
    length = min(len(c) for c in random_curves)
    for n in range(1, length + 1):
        median = float(np.median([c[n - 1] for c in random_curves]))
        if (median >= value) if maximize else (median <= value):
            return n
    return None


def targets(arms: dict[str, Any], maximize: bool) -> dict[str, bool | None]:
    """Which targets lrsearch's default meets (None where a baseline is missing)."""
    def no_worse(a: float, b: float) -> bool:
        return a >= b if maximize else a <= b

    ours = arms.get("lrsearch")
    if ours is None:
        return {}
    random, textbook = arms.get("random"), arms.get("textbook")
    return {
        "T25": no_worse(ours["at25"][1], random["at100"][1]) if random else None,
        "T10": (no_worse(ours["at10"][1], textbook["at10"][1]) and no_worse(ours["at10"][1], random["at25"][1]))
        if random and textbook else None,
        "Tep": ours["epochs"] <= 0.5,
    }


def _fmt(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.4g}"


def markdown(summary: dict[str, Any]) -> str:
    arrow = "higher" if summary["maximize"] else "lower"
    seeds = max(a["seeds"] for a in summary["arms"].values())
    lines = [f"### {summary['task']}{' (held out)' if summary['holdout'] else ''}: {summary['metric']}, {arrow} is "
             f"better; {summary['epochs']} epochs a trial; {seeds} seeds", "",
             "| arm | best@10 median [IQR] | best@25 median [IQR] | random best@100 | best@25 = random@ | "
             "epochs / 25 full | wall s |",
             "|---|---|---|---|---|---|---|"]
    for name, arm in summary["arms"].items():
        q10, q25 = arm["at10"], arm["at25"]
        at100 = f"{_fmt(arm['at100'][1])} [{_fmt(arm['at100'][0])}, {_fmt(arm['at100'][2])}]" if arm["at100"] else ""
        lines.append(f"| {name} | {_fmt(q10[1])} [{_fmt(q10[0])}, {_fmt(q10[2])}] | {_fmt(q25[1])} [{_fmt(q25[0])}, "
                     f"{_fmt(q25[2])}] | {at100} | {_equivalent(arm)} | {arm['epochs']:.2f} | {arm['wall']:.1f} |")
    met = ", ".join(f"{k} {'met' if v else 'missed' if v is not None else 'n/a'}"
                    for k, v in summary["targets"].items())
    return "\n".join([*lines, "", f"lrsearch's default: {met}", ""])


def _equivalent(arm: dict[str, Any]) -> str:
    if "random_equivalent" not in arm:
        return ""
    n, length = arm["random_equivalent"], min(len(c) for c in arm["curves"])
    return f"> {length}" if n is None else str(n)


def plot(summary: dict[str, Any], path: Path) -> None:
    """Best so far against trials: the median over seeds and the interquartile band, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    shown: list[float] = []  # medians and lower quartiles from the 4th trial on: the first trials would squash the rest
    for index, (name, arm) in enumerate(summary["arms"].items()):
        length = min(len(c) for c in arm["curves"])
        if length < 2:
            continue
        values = np.array([c[:length] for c in arm["curves"]], dtype=float)
        values[~np.isfinite(values)] = np.nan
        x = np.arange(1, length + 1)
        q1, median, q3 = np.nanpercentile(values, [25, 50, 75], axis=0)
        axes.plot(x, median, color=f"C{index}", label=name, linewidth=2 if name == "lrsearch" else 1.2)
        axes.fill_between(x, q1, q3, color=f"C{index}", alpha=0.15)
        shown += [v for v in (*q1[3:], *median[3:]) if math.isfinite(v)]
    if shown:
        low, high = min(shown), max(shown)
        axes.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
    axes.set(xscale="log", xlabel="trials", ylabel=f"best {summary['metric']} so far",
             title=f"{summary['task']}: median and interquartile range over seeds")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def paired(docs: dict[str, list[dict[str, Any]]], n: int) -> dict[str, tuple[int, int, int]]:
    """lrsearch's default against each other arm, seed by seed over every task: (wins, losses, ties) of its best
    after ``n`` trials. Pairs share the task, the seed and the initial weights, so this sees differences that a
    median over seeds hides in the spread between seeds."""
    out: dict[str, list[int]] = {}
    for doc in (d for task_docs in docs.values() for d in task_docs):
        maximize = doc["direction"] == "maximize"
        if "lrsearch" not in doc["arms"]:
            continue
        ours = best_at(curve(doc["arms"]["lrsearch"]["trials"], maximize), n, maximize)
        for name, arm in doc["arms"].items():
            if name == "lrsearch":
                continue
            theirs = best_at(curve(arm["trials"], maximize), n, maximize)
            counts = out.setdefault(name, [0, 0, 0])
            counts[2 if ours == theirs else 0 if (ours > theirs) == maximize else 1] += 1
    return {name: (c[0], c[1], c[2]) for name, c in sorted(out.items(), key=lambda kv: ORDER.index(kv[0]))}


def report(results: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """The markdown report of every task under ``results``, with a plot per task beside it."""
    loaded = load(results)
    summaries = {task: summarise(task, docs) for task, docs in sorted(loaded.items())}
    parts = []
    for task, summary in summaries.items():
        plot(summary, results / f"{task}.png")
        parts.append(markdown(summary))
    rows = ["| task | T25 | T10 | Tep |", "|---|---|---|---|"]
    for task, summary in summaries.items():
        rows.append(f"| {task}{' (held out)' if summary['holdout'] else ''} | "
                    + " | ".join({True: "met", False: "missed", None: "n/a"}[summary["targets"].get(k)]
                                 for k in ("T25", "T10", "Tep")) + " |")
    pairs = ["## lrsearch's default against each arm, seed by seed (wins / losses / ties over every task and seed)",
             "", "| arm | after 10 trials | after 25 trials |", "|---|---|---|"]
    at10, at25 = paired(loaded, 10), paired(loaded, 25)
    pairs += [f"| {name} | {' / '.join(map(str, at10[name]))} | {' / '.join(map(str, at25[name]))} |" for name in at10]
    text = "\n".join(["## Targets of lrsearch's default", "", *rows, "", *pairs, "", *parts])
    (results / "REPORT.md").write_text(text)
    (results / "summary.json").write_text(json.dumps(
        {t: {k: v for k, v in s.items() if k != "arms"} | {"arms": {a: {k: v for k, v in arm.items() if k != "curves"}
                                                                      for a, arm in s["arms"].items()}}
         for t, s in summaries.items()}, indent=1))
    return text, summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "search")
    print(report(parser.parse_args().results)[0])


if __name__ == "__main__":
    main()
