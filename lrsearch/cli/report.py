"""What users read in the terminal: live progress of ``tune`` (with or without workers), and the tables of
``tune``, ``show`` and ``studies``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from lrsearch.study.results import plain_params, top_trials

if TYPE_CHECKING:
    import optuna
    from rich.progress import Progress, TaskID

    from lrsearch.config.spec import StudySpec
    from lrsearch.training.trial import EpochMetrics, TrialOutcome


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trials_table(study: optuna.Study, trials: list[optuna.trial.FrozenTrial] | None = None, title: str = "") -> Table:
    table = Table(title=title or f"study {study.study_name} ({study.direction.name.lower()})")
    for column in ("trial", "state", "optimizer", "params", "value", "diverged", "role"):
        table.add_column(column, justify="right" if column in ("trial", "value") else "left")
    for t in trials if trials is not None else study.get_trials(deepcopy=False):
        params = plain_params(t)
        optimizer = params.pop("optimizer", "")
        text = " ".join(f"{k}={_format(v)}" for k, v in params.items())
        value = "" if t.value is None else _format(t.value)
        table.add_row(str(t.number), t.state.name, str(optimizer), text, value,
                      "yes" if t.user_attrs.get("diverged") else "", trial_role(t))
    return table


def trial_role(trial: optuna.trial.FrozenTrial) -> str:
    """Why a trial ran, where it is not a searched one: a textbook or warm-start configuration, or a confirmation
    of another trial's configuration on a new seed; and why one never trained."""
    from lrsearch.study.confirmation import CONFIRMS_ATTR, SEED_ATTR
    from lrsearch.study.states import NEVER_TRAINED

    attrs = trial.user_attrs
    if attrs.get("fail_reason") in NEVER_TRAINED:
        return attrs["fail_reason"]
    if CONFIRMS_ATTR in attrs:
        return f"confirms trial {attrs[CONFIRMS_ATTR]} (seed {attrs.get(SEED_ATTR)})"
    label = attrs.get("portfolio")
    if label is None:
        return ""
    return f"warm start ({label.removeprefix('warm:')})" if label.startswith("warm:") else f"textbook ({label})"


def answer_lines(study: optuna.Study) -> list[str]:
    """The study's answer in a few lines: the configuration, its value on the seeds it trained with, and the
    command that exports it."""
    from lrsearch.study.results import study_answer

    answer = study_answer(study)
    params = plain_params(answer.trial)
    optimizer = params.pop("optimizer")
    metric = study.user_attrs.get("spec", {}).get("objective", {}).get("metric", "value")
    seeds = ", ".join(str(s) for s in answer.seeds)
    if len(answer.values) > 1:
        worth = (f"{metric} {_format(answer.value)} ± {answer.spread:.2g} (mean ± sd over seeds {seeds}: trials "
                 f"{', '.join(map(str, answer.trials))})")
    else:
        worth = f"{metric} {_format(answer.value)} (one run, seed {seeds}: a new seed may do a little worse)"
    return [f"answer: {optimizer} " + " ".join(f"{k}={_format(v)}" for k, v in params.items())
            + f" (trial {answer.trial.number})",
            f"  {worth}",
            f"  export it: lrsearch export {study.study_name} -o best.json"]


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

    def study_finished(self, study: optuna.Study, spec: StudySpec) -> None:
        """Nothing to show: ``tune`` says the study is finished."""

    def study_started(self, study: optuna.Study, spec: StudySpec) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from lrsearch.study.storage import count_trials

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
        if pending is not None and pending[1] is not None:
            value = pending[1].value
            if value is not None and (not best or _better(study, value, best[0].value)):
                self._best = f"best {metric} {value:.4g} (trial {pending[0]})"
        if self._best:
            self._progress.update(self._trials, description=f"study {study.study_name}: {self._best}")


def _better(study: optuna.Study, a: float, b: float) -> bool:
    import optuna

    return a < b if study.direction == optuna.study.StudyDirection.MINIMIZE else a > b


class WorkersProgress:
    """Live progress of ``tune --workers N``, read from the storage: trials done of the budget, the best so far."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __call__(self, study: optuna.Study, budget: int, workers: int) -> None:
        from lrsearch.study.storage import count_trials

        if self._progress is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=self.console)
            self._progress.start()
            self._task = self._progress.add_task(f"study {study.study_name} ({workers} workers)", total=budget)
        best = top_trials(study, 1)
        suffix = f": best {best[0].value:.4g} (trial {best[0].number})" if best else ""
        self._progress.update(self._task, completed=count_trials(study),
                              description=f"study {study.study_name} ({workers} workers){suffix}")

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

