"""What users read: live progress of ``tune``, and the tables and JSON of ``tune``, ``show`` and ``studies``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    import optuna
    from rich.progress import Progress, TaskID

    from lrsearch.spec import StudySpec
    from lrsearch.trial_runner import EpochMetrics, TrialOutcome


def finite(value: float | None) -> float | None:
    """JSON has no Infinity or NaN: a diverged trial's value is shown as null."""
    return value if value is not None and math.isfinite(value) else None


def plain_params(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A trial's configuration in the user's names: optimizer, lr, beta1, ..., schedule."""
    config = trial.user_attrs.get("config")
    if config is None:
        return dict(trial.params)
    schedule = config["schedule"]
    return {"optimizer": config["optimizer"], **config["params"], "schedule": schedule["name"],
            **{k: v for k, v in schedule.items() if k != "name"}}


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def study_json(study: optuna.Study) -> dict[str, Any]:
    """``show --format json``: the study, its best trial and every trial, values null where not finite."""
    from lrsearch.export import best_trial

    try:
        best = best_trial(study)
        best_json: dict[str, Any] | None = {"number": best.number, "value": best.value, "params": plain_params(best)}
    except Exception:
        best_json = None
    return {
        "study": study.study_name,
        "direction": study.direction.name.lower(),
        "best_trial": best_json,
        "trials": [
            {
                "number": t.number,
                "state": t.state.name,
                "value": finite(t.value),
                "params": plain_params(t),
                "optuna_params": t.params,
                "user_attrs": {k: finite(v) if isinstance(v, float) else v for k, v in t.user_attrs.items()},
            }
            for t in study.get_trials(deepcopy=False)
        ],
    }


def trials_table(study: optuna.Study, trials: list[optuna.trial.FrozenTrial] | None = None, title: str = "") -> Table:
    table = Table(title=title or f"study {study.study_name} ({study.direction.name.lower()})")
    for column in ("trial", "state", "optimizer", "params", "value", "diverged"):
        table.add_column(column, justify="right" if column in ("trial", "value") else "left")
    for t in trials if trials is not None else study.get_trials(deepcopy=False):
        params = plain_params(t)
        optimizer = params.pop("optimizer", "")
        text = " ".join(f"{k}={_format(v)}" for k, v in params.items())
        value = "" if t.value is None else _format(t.value)
        table.add_row(str(t.number), t.state.name, str(optimizer), text, value,
                      "yes" if t.user_attrs.get("diverged") else "")
    return table


def top_trials(study: optuna.Study, count: int = 5) -> list[optuna.trial.FrozenTrial]:
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if finite(t.value) is not None]
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(complete, key=lambda t: t.value, reverse=reverse)[:count]


def studies_rows(storage_url: str) -> list[dict[str, Any]]:
    import optuna

    from lrsearch.studies import open_storage

    storage = open_storage(storage_url, create=False)
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=True):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        counts: dict[str, int] = {}
        for t in study.get_trials(deepcopy=False):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        spec = summary.user_attrs.get("spec", {})
        rows.append({
            "study": summary.study_name,
            "direction": summary.direction.name.lower(),
            "n_trials": summary.n_trials,
            "budget": spec.get("budget", {}).get("n_trials"),
            "states": counts,
            "best_value": finite(summary.best_trial.value) if summary.best_trial else None,
            "best_trial": summary.best_trial.number if summary.best_trial else None,
            "started": summary.datetime_start.isoformat() if summary.datetime_start else None,
        })
    return rows


def studies_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="studies")
    for column in ("study", "direction", "trials", "complete", "pruned", "failed", "best value", "best trial"):
        table.add_column(column)
    for row in rows:
        states = row["states"]
        table.add_row(row["study"], row["direction"], f"{row['n_trials']}/{row['budget'] or '?'}",
                      str(states.get("COMPLETE", 0)), str(states.get("PRUNED", 0)), str(states.get("FAIL", 0)),
                      _format(row["best_value"]) if row["best_value"] is not None else "",
                      str(row["best_trial"] if row["best_trial"] is not None else ""))
    return table


class ProgressDisplay:
    """Live progress of ``tune``: trials done of the budget, the current trial's epoch, the best value so far."""

    def __init__(self, console: Console | None = None, enabled: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self._progress: Progress | None = None
        self._trials: TaskID | None = None
        self._epochs: TaskID | None = None
        self._best = ""

    def study_started(self, study: optuna.Study, spec: StudySpec) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from lrsearch.studies import count_trials

        self._budget, self._epochs_per_trial = spec.budget.n_trials, spec.budget.epochs
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=self.console, transient=False)
        self._progress.start()
        done = count_trials(study)
        self._trials = self._progress.add_task(f"study {study.study_name}", total=self._budget, completed=done)
        self._epochs = self._progress.add_task("waiting for a trial", total=self._epochs_per_trial)
        self._update_best(study)

    def trial_started(self, trial: optuna.Trial, config: dict[str, Any]) -> None:
        if self._progress is None:
            return
        lr = config["params"].get("lr")
        self._progress.reset(self._epochs, total=self._epochs_per_trial,
                             description=f"trial {trial.number}: {config['optimizer']} lr={lr:.3g}")

    def epoch_ended(self, trial: optuna.Trial, epoch: EpochMetrics) -> None:
        if self._progress is not None:
            self._progress.update(self._epochs, completed=epoch.epoch + 1)

    def trial_ended(self, trial: optuna.Trial, state: str, outcome: TrialOutcome | None,
                    error: BaseException | None) -> None:
        if self._progress is None:
            return
        if state in ("COMPLETE", "PRUNED"):
            self._progress.advance(self._trials)
        if state == "COMPLETE":
            self._update_best(trial.study, pending=(trial.number, outcome))

    def study_ended(self, study: optuna.Study, error: BaseException | None = None) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _update_best(self, study: optuna.Study, pending: tuple[int, TrialOutcome | None] | None = None) -> None:
        best = top_trials(study, 1)
        metric = study.user_attrs.get("spec", {}).get("objective", {}).get("metric", "value")
        if best:
            self._best = f"best {metric} {best[0].value:.4g} (trial {best[0].number})"
        if pending is not None and pending[1] is not None and pending[1].final:
            value = pending[1].final.get(metric)
            if value is not None and (not best or _better(study, value, best[0].value)):
                self._best = f"best {metric} {value:.4g} (trial {pending[0]})"
        if self._best:
            self._progress.update(self._trials, description=f"study {study.study_name}: {self._best}")


def _better(study: optuna.Study, a: float, b: float) -> bool:
    import optuna

    return a < b if study.direction == optuna.study.StudyDirection.MINIMIZE else a > b
