"""The study file's ``sampler:`` and ``pruner:`` sections: which search algorithm, and the settings of the default
one (the prior sampler and the halving pruner, :mod:`lrsearch.study.prior_search`). A setting left out keeps the
default below; the study layer reads the settings through :meth:`SamplerSpec.options` and
:meth:`PrunerSpec.options`."""

from __future__ import annotations

from typing import Any, Literal

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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, validate_default=True)


def _only_for(spec: BaseModel, name: str, settings: tuple[str, ...]) -> None:
    given = [s for s in settings if getattr(spec, s) is not None]
    kind = type(spec).__name__.removesuffix("Spec").lower()
    if given and spec.name != name:  # type: ignore[attr-defined]
        raise ValueError(f"{', '.join(given)}: {'settings' if len(given) > 1 else 'a setting'} of the {name} {kind} "
                         f"only ({kind}.name is {spec.name!r})")  # type: ignore[attr-defined]


class SamplerSpec(_Strict):
    name: Literal[SAMPLERS] = "prior"  # type: ignore[valid-type]
    seed: int | None = None
    prior_share: float | None = Field(None, ge=0, le=1)
    """``prior`` only: the share of trials drawn from the prior (default :data:`PRIOR_SHARE`)."""
    uniform_share: float | None = Field(None, ge=0, le=1)
    """``prior`` only: the share drawn uniformly over the whole space (default :data:`UNIFORM_SHARE`)."""

    @model_validator(mode="after")
    def _settings(self) -> SamplerSpec:
        _only_for(self, "prior", ("prior_share", "uniform_share"))
        given = self.options()
        prior, uniform = given.get("prior_share", PRIOR_SHARE), given.get("uniform_share", UNIFORM_SHARE)
        if prior + uniform > 1:
            raise ValueError(f"prior_share + uniform_share must be <= 1 (got {prior} + {uniform})")
        return self

    def options(self) -> dict[str, Any]:
        """The settings the study file gives, for the sampler's constructor."""
        return {k: getattr(self, k) for k in ("prior_share", "uniform_share") if getattr(self, k) is not None}


class PrunerSpec(_Strict):
    name: Literal[PRUNERS] = "halving"  # type: ignore[valid-type]
    epoch_budget: float | None = Field(None, gt=0, le=1)
    """``halving`` only: the share of ``n_trials`` full trials' epochs to spend (default :data:`EPOCH_BUDGET`)."""
    keep: float | None = Field(None, gt=0, lt=1)
    """``halving`` only: the share of a rung's trials that goes on (default :data:`KEEP`)."""
    first_rung: float | None = Field(None, gt=0, le=0.5)
    """``halving`` only: the first rung as a share of the epochs, the second at twice it (:data:`FIRST_RUNG`)."""

    @model_validator(mode="after")
    def _settings(self) -> PrunerSpec:
        _only_for(self, "halving", ("epoch_budget", "keep", "first_rung"))
        return self

    def options(self) -> dict[str, Any]:
        """The settings the study file gives, for the pruner's constructor."""
        return {k: getattr(self, k) for k in ("epoch_budget", "keep", "first_rung") if getattr(self, k) is not None}
