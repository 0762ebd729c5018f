"""The study file's ``sampler:`` and ``pruner:`` sections: which search algorithm, and the settings of the default
one (the prior sampler and the halving pruner, :mod:`lrsearch.study.prior_search`). A setting left out keeps the
default below; the study layer reads the settings through :meth:`SamplerSpec.options` and
:meth:`PrunerSpec.options`."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SAMPLERS = ("prior", "tpe", "gp", "cmaes", "nsga2", "qmc", "random", "grid")
PRUNERS = ("halving", "none", "median", "sha", "hyperband", "wilcoxon")

PRIOR_SHARE = 0.25
"""The prior sampler's share of trials drawn from the prior (centred on the textbook, or on a warm start)."""
UNIFORM_SHARE = 0.0
"""Its share of trials drawn uniformly over the whole space (PriorBand's third source); the rest mutate a good trial."""
EPOCH_BUDGET = 0.5
"""The halving pruner keeps the study to about this share of the epochs of ``n_trials`` full trials."""
KEEP = 1 / 3
"""The share of the trials at a rung that goes on while the study is within its epochs."""
FIRST_RUNG = 0.25
"""The first rung, as a share of the epochs; the second is at twice it."""


class StrictModel(BaseModel):
    """The base of every study-file section: unknown keys are refused, defaults validated."""

    model_config = ConfigDict(extra="forbid", strict=False, validate_default=True)


class _AlgorithmSpec(StrictModel):
    """A ``sampler:`` or ``pruner:`` section: ``SETTINGS`` belong to the algorithm named ``OWNER`` only."""

    OWNER: ClassVar[str]
    SETTINGS: ClassVar[tuple[str, ...]]
    name: str

    @model_validator(mode="after")
    def _owner_only(self) -> _AlgorithmSpec:
        given = list(self.options())
        kind = type(self).__name__.removesuffix("Spec").lower()
        if given and self.name != self.OWNER:
            raise ValueError(f"{', '.join(given)}: {'settings' if len(given) > 1 else 'a setting'} of the "
                             f"{self.OWNER} {kind} only ({kind}.name is {self.name!r})")
        return self

    def options(self) -> dict[str, Any]:
        """The settings the study file gives, for the algorithm's constructor."""
        return {k: getattr(self, k) for k in self.SETTINGS if getattr(self, k) is not None}


class SamplerSpec(_AlgorithmSpec):
    OWNER: ClassVar[str] = "prior"
    SETTINGS: ClassVar[tuple[str, ...]] = ("prior_share", "uniform_share")
    name: Literal[SAMPLERS] = "prior"  # type: ignore[valid-type]
    seed: int | None = None
    prior_share: float | None = Field(None, ge=0, le=1)
    """``prior`` only: the share of trials drawn from the prior (default :data:`PRIOR_SHARE`)."""
    uniform_share: float | None = Field(None, ge=0, le=1)
    """``prior`` only: the share drawn uniformly over the whole space (default :data:`UNIFORM_SHARE`)."""

    @model_validator(mode="after")
    def _shares(self) -> SamplerSpec:
        prior = PRIOR_SHARE if self.prior_share is None else self.prior_share
        uniform = UNIFORM_SHARE if self.uniform_share is None else self.uniform_share
        if prior + uniform > 1:
            raise ValueError(f"prior_share + uniform_share must be <= 1 (got {prior} + {uniform})")
        return self


class PrunerSpec(_AlgorithmSpec):
    OWNER: ClassVar[str] = "halving"
    SETTINGS: ClassVar[tuple[str, ...]] = ("epoch_budget", "keep", "first_rung")
    name: Literal[PRUNERS] = "halving"  # type: ignore[valid-type]
    epoch_budget: float | None = Field(None, gt=0, le=1)
    """``halving`` only: the share of ``n_trials`` full trials' epochs to spend (default :data:`EPOCH_BUDGET`)."""
    keep: float | None = Field(None, gt=0, lt=1)
    """``halving`` only: the share of a rung's trials that goes on (default :data:`KEEP`)."""
    first_rung: float | None = Field(None, gt=0, le=0.5)
    """``halving`` only: the first rung as a share of the epochs, the second at twice it (:data:`FIRST_RUNG`)."""
