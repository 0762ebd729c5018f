"""The study file: one YAML that fully describes a study, validated before anything starts.

:func:`load_spec` reads and validates a file and raises :class:`~lrsearch.errors.SpecError` carrying *every*
problem found, each naming the field, the bad value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lrsearch.config.algorithms import PrunerSpec, SamplerSpec
from lrsearch.config.algorithms import StrictModel as _Strict
from lrsearch.config.presets import CLASSIC, OPTIMIZERS, PRESETS, SCHEDULES, Range
from lrsearch.config.problems import problems
from lrsearch.config.search_space import SearchSpace
from lrsearch.errors import SpecError

BUILTIN_TASKS = ("digits-mlp", "quadratic")
PRECISIONS = ("fp32", "bf16", "fp16")


class RangeSpec(_Strict):
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> RangeSpec:
        if self.low > self.high:
            raise ValueError(f"low must be <= high (got low={self.low}, high={self.high})")
        return self


class TaskRef(_Strict):
    """A user task: ``entrypoint`` returns a Task; ``function`` is a training function (function mode)."""

    entrypoint: str | None = None
    function: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_target(self) -> TaskRef:
        targets = [t for t in (self.entrypoint, self.function) if t is not None]
        if len(targets) != 1:
            raise ValueError("give exactly one of entrypoint or function, as 'module:function'")
        if ":" not in targets[0] or not all(targets[0].split(":", 1)):
            raise ValueError(f"must be 'module:function' (got {targets[0]!r})")
        return self


class ObjectiveSpec(_Strict):
    """``objective:``: the metric a trial returns, whether lower or higher is better, and at which epoch."""

    metric: str = "val_loss"
    direction: Literal["minimize", "maximize"] = "minimize"
    at: Literal["last", "best"] = "last"
    """``last``: the metric after the last epoch; ``best``: its best epoch (recorded with the epoch it came from)."""


class Budget(_Strict):
    n_trials: int = Field(40, gt=0)
    epochs: int = Field(20, gt=0)
    timeout: float | None = Field(None, gt=0)


class Loader(_Strict):
    """``train.loader:``: how a streamed dataset is read (torch's DataLoader options); ``auto`` lets lrsearch choose
    (see :mod:`lrsearch.training.streaming`)."""

    num_workers: int | Literal["auto"] = "auto"
    pin_memory: bool | Literal["auto"] = "auto"
    persistent_workers: bool | Literal["auto"] = "auto"
    prefetch_factor: int = Field(2, gt=0)

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError(f"must be 0 (read in the training process), a positive integer or 'auto' (got {value})")
        return value

    @field_validator("pin_memory", "persistent_workers", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        if isinstance(value, bool) or value == "auto":
            return value
        raise ValueError(f"must be true, false or 'auto' (got {value!r})")


class Train(_Strict):
    batch_size: int = Field(64, gt=0)
    device: str = "auto"
    seed: int = 0
    nproc_per_trial: int | Literal["auto"] = 1
    rank_timeout: float = Field(60.0, gt=0)
    threads: int | None = Field(None, gt=0)
    batch_trials: int = Field(1, gt=0)
    """Trials trained together as one stacked model (``torch.func.vmap``); 1 trains them one at a time."""
    precision: Literal[PRECISIONS] = "fp32"  # type: ignore[valid-type]
    """``bf16`` or ``fp16``: forward and loss under ``torch.autocast`` (fp16 with gradient scaling)."""
    loader: Loader = Field(default_factory=Loader)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError(f"must be auto, cpu, cuda or cuda:N (got {value!r})")

    @field_validator("nproc_per_trial")
    @classmethod
    def _nproc(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value <= 0:
            raise ValueError(f"must be a positive integer or 'auto' (got {value})")
        return value

    @model_validator(mode="after")
    def _one_process_per_batch(self) -> Train:
        if self.batch_trials > 1 and isinstance(self.nproc_per_trial, int) and self.nproc_per_trial > 1:
            raise ValueError(f"batch_trials {self.batch_trials} trains its trials stacked in one process; it cannot "
                             f"be combined with nproc_per_trial {self.nproc_per_trial}")
        if self.batch_trials > 1 and self.precision != "fp32":
            raise ValueError(f"batch_trials {self.batch_trials} trains its stacked trials in fp32; it cannot be "
                             f"combined with precision {self.precision} (allowed with batch_trials: fp32)")
        return self


class Confirm(_Strict):
    """``search.confirm: {configs, seeds}``: before the study ends, its ``configs`` best configurations train again
    on ``seeds`` new seeds each, and the study returns the best mean."""

    configs: int = Field(2, gt=0)
    seeds: int = Field(1, gt=0)


AUTO_CONFIRM = Confirm(configs=2, seeds=1)
"""``confirm: auto`` with the prior sampler. Not the default: on the search bench (2026-12-02, 7 tasks x 10 seeds),
confirming inside the budget of half the epochs of ``n_trials`` full trials left the searched trials too few epochs
to go past their first rung, and the retrained answer was worse than without confirming on 5 of 7 tasks, better
on 2 (seed by seed: 9 wins, 36 losses, 25 ties; see README, "How the search works")."""
CONFIRM_MIN_TRIALS = 20
"""``confirm: auto`` confirms only in a study of at least this many trials: a smaller one has no search to guard."""


class Search(_Strict):
    optimizers: list[Literal[OPTIMIZERS]] = Field(default_factory=lambda: list(CLASSIC), min_length=1)  # type: ignore[valid-type]
    schedules: list[Literal[SCHEDULES]] = Field(default_factory=lambda: ["constant"], min_length=1)  # type: ignore[valid-type]
    param_names: Literal["auto", "per_optimizer", "shared", "relative"] = "auto"
    """How Optuna's parameters are named (``auto``: ``relative`` for the prior sampler, else ``per_optimizer``)."""
    portfolio: Literal["auto", "textbook", "none"] = "auto"
    """``textbook``: run the textbook configurations first (``auto``: for the prior sampler)."""
    grid_points: int = Field(5, gt=0)
    lr_range: Literal["auto", "preset"] = "preset"
    confirm: Literal["auto", "none"] | Confirm = "none"
    """Train the best configurations again on new seeds before the study ends (``auto``: 2 on 1 new seed each with
    the prior sampler, from ``CONFIRM_MIN_TRIALS`` trials; ``none``, the default: the study's best trial is its
    answer)."""
    warm_start: list[str] = Field(default_factory=list)
    """Earlier studies (names in the same storage) or exported configuration files (``.json``/``.yaml``) whose best
    configurations run first, and around which the prior sampler searches."""
    # Per-optimizer overrides, one optional field per optimizer: {hyperparameter: value | {low, high}}.
    sgd: dict[str, float | RangeSpec] | None = None
    momentum: dict[str, float | RangeSpec] | None = None
    nesterov: dict[str, float | RangeSpec] | None = None
    rmsprop: dict[str, float | RangeSpec] | None = None
    adam: dict[str, float | RangeSpec] | None = None
    adamw: dict[str, float | RangeSpec] | None = None
    nadam: dict[str, float | RangeSpec] | None = None
    radam: dict[str, float | RangeSpec] | None = None
    adagrad: dict[str, float | RangeSpec] | None = None
    muon: dict[str, float | RangeSpec] | None = None
    adafactor: dict[str, float | RangeSpec] | None = None
    lion: dict[str, float | RangeSpec] | None = None
    soap: dict[str, float | RangeSpec] | None = None
    schedulefree_adamw: dict[str, float | RangeSpec] | None = None
    schedulefree_sgd: dict[str, float | RangeSpec] | None = None
    prodigy: dict[str, float | RangeSpec] | None = None

    @field_validator("optimizers")
    @classmethod
    def _installed(cls, value: list[str]) -> list[str]:
        """An optimizer that needs an extra or a newer torch is refused before anything starts, in one line."""
        problems = [problem for name in value if (problem := PRESETS[name].problem())]
        if problems:
            raise ValueError("\n".join(problems))
        return value

    @field_validator(*OPTIMIZERS)
    @classmethod
    def _override_values(cls, value: dict | None, info: ValidationInfo) -> dict | None:
        optimizer = info.field_name
        problems = [
            f"search.{optimizer}.{name}: {p}"
            for name, v in (value or {}).items()
            for p in _check_override(optimizer, name, v)
        ]
        if problems:
            raise ValueError("\n".join(problems))
        return value

    @model_validator(mode="after")
    def _overrides_are_searched(self) -> Search:
        unused = [o for o in OPTIMIZERS if getattr(self, o) and o not in self.optimizers]
        if unused:
            raise ValueError("\n".join(
                f"search.{o}: overrides given but {o!r} is not in search.optimizers {list(self.optimizers)}"
                for o in unused
            ))
        return self

    def space(self, param_names: str = "per_optimizer") -> SearchSpace:
        """The resolved space; :meth:`StudySpec.space` resolves ``param_names: auto`` against the sampler."""
        overrides: dict[str, dict[str, float | Range]] = {}
        for optimizer in OPTIMIZERS:
            for name, value in (getattr(self, optimizer) or {}).items():
                overrides.setdefault(optimizer, {})[name] = (
                    Range(value.low, value.high) if isinstance(value, RangeSpec) else float(value)
                )
        names = param_names if self.param_names == "auto" else self.param_names
        return SearchSpace(tuple(self.optimizers), tuple(self.schedules), overrides, names)


def _check_override(optimizer: str, name: str, value: float | RangeSpec) -> list[str]:
    allowed = PRESETS[optimizer].hyperparameters
    if name not in allowed:
        return [f"unknown hyperparameter for {optimizer} (allowed: {', '.join(allowed)})"]
    values = [value.low, value.high] if isinstance(value, RangeSpec) else [value]
    if name in ("beta1", "beta2", "momentum", "alpha", "aux_beta1", "aux_beta2", "warmup_fraction"):
        bad = [v for v in values if not 0 < v < 1]
        return [f"must be in (0, 1) (got {bad[0]})"] if bad else []
    if name == "weight_decay":
        if isinstance(value, RangeSpec) and value.low <= 0:
            return [f"range low must be > 0 (it is searched on a log scale; fix it to 0 to turn decay off) "
                    f"(got {value.low})"]
        return [f"must be >= 0 (got {value})"] if not isinstance(value, RangeSpec) and value < 0 else []
    bad = [v for v in values if v <= 0]
    if bad:
        what = "low" if isinstance(value, RangeSpec) else "value"
        return [f"{what} must be > 0 (got {bad[0]})"]
    return []


class MlflowSpec(_Strict):
    experiment: str | None = None


class StudySpec(_Strict):
    """A validated study file. Field names are the YAML keys."""

    name: str = Field(min_length=1)
    task: str | TaskRef
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    budget: Budget = Field(default_factory=Budget)
    train: Train = Field(default_factory=Train)
    search: Search = Field(default_factory=Search)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)
    source: str | None = Field(None, exclude=True)
    """Path of the file this spec came from; user task modules are importable relative to it."""

    @field_validator("task")
    @classmethod
    def _task(cls, value: str | TaskRef) -> str | TaskRef:
        if isinstance(value, str) and value not in BUILTIN_TASKS:
            raise ValueError(
                f"unknown task {value!r} (allowed: {', '.join(BUILTIN_TASKS)}, "
                "or {entrypoint: 'module:function', args: {...}})"
            )
        return value

    @model_validator(mode="after")
    def _function_mode(self) -> StudySpec:
        """What a training function (``task.function``, the user's own loop) cannot do: lrsearch owns no loop."""
        if not isinstance(self.task, TaskRef) or self.task.function is None:
            return self
        problems = []
        if self.train.batch_trials > 1:
            problems.append(f"train.batch_trials: {self.train.batch_trials} trials at once: a training function "
                            "(task.function) trains one trial at a time; stacking needs a Task (built-in or "
                            "task.entrypoint)")
        if self.train.nproc_per_trial != 1:
            problems.append(f"train.nproc_per_trial: task.function trains in your own loop, one process per trial "
                            f"(got {self.train.nproc_per_trial!r}; allowed: 1; start DDP inside train() if needed)")
        if self.search.lr_range == "auto":
            problems.append("search.lr_range: 'auto' runs the LR range test on a Task, and task.function has none "
                            "(allowed: preset)")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _prior_needs_relative_names(self) -> StudySpec:
        if self.sampler.name == "prior" and self.search.param_names in ("per_optimizer", "shared"):
            raise ValueError(f"search.param_names {self.search.param_names!r}: the prior sampler searches the space "
                             "shared by every optimizer (allowed with sampler prior: auto, relative)")
        if self.sampler.name == "grid" and self.search.portfolio == "textbook":
            raise ValueError("search.portfolio 'textbook': the grid sampler runs its own grid "
                             "(allowed with sampler grid: auto, none)")
        return self

    def space(self) -> SearchSpace:
        """The search space, with ``param_names: auto`` resolved: ``relative`` for the prior sampler, else
        ``per_optimizer``."""
        return self.search.space("relative" if self.sampler.name == "prior" else "per_optimizer")

    @property
    def runs_portfolio(self) -> bool:
        """Whether the study runs the textbook configurations first (``search.portfolio``; ``auto``: with the prior
        sampler)."""
        if self.search.portfolio == "auto":
            return self.sampler.name == "prior"
        return self.search.portfolio == "textbook"

    @property
    def confirmation(self) -> Confirm | None:
        """How many configurations are confirmed on how many new seeds (``search.confirm``; ``auto``: with the prior
        sampler, in a study of at least ``CONFIRM_MIN_TRIALS`` trials), or None."""
        confirm = self.search.confirm
        if confirm == "auto":
            return AUTO_CONFIRM if self.sampler.name == "prior" and self.budget.n_trials >= CONFIRM_MIN_TRIALS \
                else None
        return None if confirm == "none" else confirm

    @model_validator(mode="after")
    def _stackable(self) -> StudySpec:
        if self.train.batch_trials > 1:
            refused = [f"search.optimizers: {name!r} cannot train stacked (train.batch_trials "
                       f"{self.train.batch_trials}): {PRESETS[name].not_stackable_because}; search it without "
                       "batch_trials" for name in self.search.optimizers if not PRESETS[name].stackable]
            if refused:
                raise ValueError("\n".join(refused))
        return self

    @model_validator(mode="after")
    def _confirmation_fits(self) -> StudySpec:
        confirm = self.search.confirm
        if isinstance(confirm, Confirm) and confirm.configs * confirm.seeds >= self.budget.n_trials:
            raise ValueError(f"search.confirm: {confirm.configs} configurations x {confirm.seeds} seeds take the "
                             f"whole budget of {self.budget.n_trials} trials (allowed: fewer than budget.n_trials)")
        return self

    @field_validator("objective")
    @classmethod
    def _metric(cls, value: ObjectiveSpec) -> ObjectiveSpec:
        if value.metric not in ("val_loss", "train_loss") and not value.metric.startswith("val_"):
            raise ValueError(f"metric must be val_loss, train_loss or val_<metric> (got {value.metric!r})")
        return value


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study file.

    Raises:
        SpecError: the file is missing, unreadable, not valid YAML, or does not validate; every problem is listed.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(str(path), ["study file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(str(path), [f"cannot read the study file ({exc.__class__.__name__}: {exc})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(str(path), [f"invalid YAML: {where}{problem}"]) from None
    spec = spec_from_dict(data, str(path))
    spec.source = str(path.resolve())
    return spec


def spec_from_dict(data: Any, source: str = "<study>") -> StudySpec:
    """Validate an already-parsed study (a dict, as the YAML would give)."""
    if not isinstance(data, dict):
        raise SpecError(source, [f"the study must be a mapping of keys to values (got {type(data).__name__})"])
    try:
        return StudySpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, problems(exc, StudySpec)) from None
