"""The search report's number formats, and its side tables beside the per-task headline: the optimizer family the
default returns (issue 22), the confirmation settings against none, and the variants of the default (issue 23)."""

from __future__ import annotations

import math
from typing import Any

from targets import ABLATIONS, DEFAULT, NO_CONFIRM, TUNED_ADAMW, no_worse


def fmt(x: float | None) -> str:
    """4 significant digits; ``diverged`` for an infinite mean (a retrain diverged); ``-``: nothing measured."""
    if x is None or math.isnan(x):
        return "-"
    return f"{x:.4g}" if math.isfinite(x) else "diverged"


def wlt(paired: dict[str, Any]) -> str:
    return f"{paired['wins']} / {paired['losses']} / {paired['ties']}"


def t_stat(paired: dict[str, Any]) -> str:
    """``, t = x``: a paired gain over its standard error across the seeds; nothing where it has none."""
    n, spread = len(paired["seeds"]), paired["spread"]
    ok = n > 1 and math.isfinite(paired["gain"]) and math.isfinite(spread) and spread > 0
    return f", t = {paired['gain'] / (spread / math.sqrt(n)):+.1f}" if ok else ""


def families_markdown(families: dict[str, Any], summaries: dict[str, Any]) -> list[str]:
    """Issue 22's table: per task that searches several families, the family the default returns on each search
    seed and its gain over tuned AdamW, retrained."""
    if not families:
        return []
    lines = ["## Families: which optimizer the default returns, and its gain over tuned AdamW", "",
             f"`{TUNED_ADAMW}` is the default search restricted to `search.optimizers: [adamw]` (what a user who tunes "
             "only AdamW gets). Gain: the default's retrained mean minus tuned AdamW's, signed so that positive means "
             "the default is better (mean over search seeds); spread: the std of the per-seed gains.", "",
             "| task (metric) | the default's family, by search seed | default retrained | tuned AdamW retrained | "
             "gain | spread | default W / L / T |", "|---|---|---|---|---|---|---|"]
    for task, f in families.items():
        chosen = ", ".join(f"{seed}: {family}" for seed, family in sorted(f["families"].items()))
        lines.append(f"| {task} ({summaries[task]['metric']}) | {chosen} | {fmt(f['default'])} | "
                     f"{fmt(f['tuned_adamw'])} | {signed(f['gain'])} | {fmt(f['spread'])} | {wlt(f)} |")
    return [*lines, ""]


def confirmation_markdown(confirmation: dict[str, Any], summaries: dict[str, Any]) -> list[str]:
    """Issue 23's item 2: each confirmation setting against the default without confirmation, per task, and on how
    many tasks its retrained mean is better, worse or tied."""
    if not confirmation:
        return []
    lines = ["## Confirmation settings against no confirmation", "",
             f"Each setting (configurations x new seeds, inside the 25 trials) against `{NO_CONFIRM}`, seed by seed. "
             "Gain: retrained mean minus no confirmation's, positive when confirming is better; spread: the std of "
             "the per-seed gains.", "",
             "| task | setting | retrained mean | no confirmation | gain | spread | W / L / T | epochs / 25 full "
             "(no confirmation's) |", "|---|---|---|---|---|---|---|---|"]
    tally: dict[str, list[int]] = {}
    for task, by_arm in confirmation.items():
        for c in by_arm.values():
            lines.append(f"| {task} | {c['setting']} | {fmt(c['retrained'])} | {fmt(c['no_confirm'])} | "
                         f"{signed(c['gain'])} | {fmt(c['spread'])} | {wlt(c)} | {c['epochs']:.2f} "
                         f"({c['no_confirm_epochs']:.2f}) |")
            maximize = summaries[task]["maximize"]
            better, worse = (no_worse(c["retrained"], c["no_confirm"], maximize),
                             no_worse(c["no_confirm"], c["retrained"], maximize))
            counts = tally.setdefault(c["setting"], [0, 0, 0])
            counts[0 if better and not worse else 1 if worse and not better else 2] += 1
    lines += [""] + [f"- {setting}: retrained mean better than no confirmation on {b} of {b + w + t} tasks, worse on "
                     f"{w}, tied on {t}." for setting, (b, w, t) in tally.items()]
    return [*lines, ""]


def ablations_markdown(ablations: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """The variants of the default, one setting changed each, on the base tasks: what each retrains to, at what
    epochs, against the default seed by seed, and on how many tasks T-win would hold with it in the default's place;
    random@12 (random search on about the default's epochs) beside them."""
    if not ablations:
        return []
    tasks = [t for t in base if any(t in per_task for per_task in ablations.values())]
    lines = ["## Variants of the default, one setting changed each", "",
             "Cell: retrained mean (epochs / 25 full; the variant's wins / losses / ties against the default, seed "
             "by seed, and t, its mean gain over the standard error), `*` where T-win "
             "would hold with the variant in the default's place (against the same arms: random@25, textbook, "
             "optuna-oob, syne-tune-asha, lrsearch-confirm-2x1).", "",
             "| variant | " + " | ".join(tasks) + " | T-win would hold on |", "|---" * (len(tasks) + 2) + "|"]

    def cell(view: dict[str, Any] | None, mark: bool, paired: str) -> str:
        return "-" if view is None else f"{fmt(view['retrained'])}{'*' if mark else ''} ({view['epochs']:.2f}{paired})"

    default = [cell(base[t]["views"].get(DEFAULT), bool(base[t]["targets"].get("T-win")), "") for t in tasks]
    held = sum(bool(base[t]["targets"].get("T-win")) for t in tasks)
    lines.append(f"| **the default** | {' | '.join(default)} | {held} of {len(tasks)} |")
    for arm, per_task in ablations.items():
        cells = [cell(base[t]["views"].get(arm), per_task[t]["t_win"], f"; {wlt(per_task[t])}{t_stat(per_task[t])}")
                 if t in per_task else "-" for t in tasks]
        wins = sum(c["t_win"] for c in per_task.values())
        lines.append(f"| {ABLATIONS[arm]} (`{arm}`) | {' | '.join(cells)} | {wins} of {len(per_task)} |")
    reference = [cell(base[t]["views"].get("random@12"), False, "") for t in tasks]
    lines.append(f"| random@12 (reference: random search on about the default's epochs) | {' | '.join(reference)} "
                 "| |")
    return [*lines, ""]


def signed(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:+.4g}" if math.isfinite(x) else "diverged"
