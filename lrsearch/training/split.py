"""Optimizers that update only some of a model's parameters (Muon), and the one optimizer a loop steps for all.

**The split rule** (:func:`hidden_weights`): Muon updates the 2-D weights of the model's hidden layers. Every other
parameter goes to AdamW: embeddings (``nn.Embedding``, ``nn.EmbeddingBag``), the output layer (the last
``nn.Linear`` the model registers; a weight tied to an embedding is the embedding's), biases and norms (1-D), and
convolution kernels (3-D and up: lrsearch does not reshape them to matrices; a task that wants Muon on them reshapes
its own way through ``Task(hidden_weights=...)``). A ``Task`` (``hidden_weights``) or function mode
(``ctx.build_optimizer(model, hidden_weights=...)``) can name the parameters itself.

**The pair as one optimizer** (:class:`CombinedOptimizer`): a ``torch.optim.Optimizer`` whose ``param_groups`` are
its parts' own group dicts, so a learning-rate scheduler built on it scales every part's lr alike (the schedule
drives both), ``step()``/``zero_grad()`` are called once, ``state_dict()`` holds every part's, and ``train()`` /
``eval()`` reach parts that have modes.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable, Iterable
from typing import Any

import torch  # this module is imported only to build an optimizer, never at CLI start-up

from lrsearch.errors import UsageError

__all__ = ["CombinedOptimizer", "hidden_weights", "split_parameters"]


def hidden_weights(model: torch.nn.Module) -> list[str]:
    """The names of the parameters Muon updates by the split rule (see the module docstring), in model order."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    excluded = {id(linears[-1].weight)} if linears else set()
    for module in model.modules():
        if isinstance(module, (torch.nn.Embedding, torch.nn.EmbeddingBag)):
            excluded.add(id(module.weight))
    return [name for name, p in model.named_parameters() if p.requires_grad and p.ndim == 2
            and id(p) not in excluded]


def split_parameters(params: Any, chosen: Iterable[str] | Callable[[torch.nn.Module], Iterable[str]] | None,
                     what: str) -> tuple[dict[str, list[str]], list[torch.Tensor], list[torch.Tensor]]:
    """Split a model's trainable parameters into the hidden weights and the rest.

    Args:
        params: The model (``nn.Module``) or its ``named_parameters()``: names are needed to tell the parts apart.
        chosen: The hidden weights' names, or a function of the model giving them; None for the split rule.
        what: The optimizer's name, for errors.

    Returns:
        ``{"muon": names, "adamw": names}`` and the two lists of tensors.

    Raises:
        UsageError: unnamed parameters, a name the model does not have, or a chosen parameter that is not 2-D.
    """
    module = getattr(params, "module", params)  # DDP: the wrapped model's own names
    if isinstance(module, torch.nn.Module):
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if chosen is None:
            chosen = hidden_weights(module)
        elif callable(chosen):
            chosen = chosen(module)
    else:
        named = [item for item in params if isinstance(item, tuple)] if params is not None else []
        if not named:
            raise UsageError(f"{what} updates the 2-D weights of hidden layers and AdamW the rest: give the model, "
                             "or model.named_parameters(), so they can be told apart")
        if chosen is None:
            chosen = [n for n, p in named if p.ndim == 2][:-1]  # every 2-D weight but the last (the output layer)
        elif callable(chosen):
            raise UsageError(f"{what}: a hidden_weights function needs the model itself, not its parameters")
    by_name = dict(named)
    chosen = list(dict.fromkeys(chosen))
    unknown = [n for n in chosen if n not in by_name]
    if unknown:
        raise UsageError(f"{what}: the model has no trainable parameter {unknown[0]!r} (it has: "
                         f"{', '.join(list(by_name)[:8])}{', ...' if len(by_name) > 8 else ''})")
    flat = [n for n in chosen if by_name[n].ndim != 2]
    if flat:
        raise UsageError(f"{what} updates 2-D weights only: {flat[0]!r} has shape {tuple(by_name[flat[0]].shape)}")
    rest = [n for n in by_name if n not in set(chosen)]
    if not chosen:
        raise UsageError(f"{what}: the model has no hidden 2-D weight to update (its parameters: "
                         f"{', '.join(list(by_name)[:8])})")
    return {"muon": chosen, "adamw": rest}, [by_name[n] for n in chosen], [by_name[n] for n in rest]


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, stepped as one (see the module docstring).

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        >>> muon = torch.optim.Muon([model[0].weight], lr=0.02)
        >>> adamw = torch.optim.AdamW([model[0].bias, *model[1].parameters()], lr=1e-3)
        >>> optimizer = CombinedOptimizer({"muon": muon, "adamw": adamw})
        >>> [group["lr"] for group in optimizer.param_groups]
        [0.02, 0.001]
    """

    def __init__(self, parts: dict[str, torch.optim.Optimizer]) -> None:
        self.parts, self._ready = dict(parts), False
        # The base class sets up the step hooks and profiling; its own group is then replaced by the parts' groups.
        super().__init__([p for part in self.parts.values() for g in part.param_groups for p in g["params"]], {})
        self._share()
        self._ready = True

    def _share(self) -> None:
        self.param_groups = [group for part in self.parts.values() for group in part.param_groups]
        self.state = ChainMap(*(part.state for part in self.parts.values()))  # type: ignore[assignment]

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in self.parts.values():
            part.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts.values():
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"parts": {name: part.state_dict() for name, part in self.parts.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        for name, part in self.parts.items():
            part.load_state_dict(state_dict["parts"][name])
        self._share()  # loading replaced the parts' group dicts

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self._ready:
            raise UsageError("a CombinedOptimizer's parameters are its parts': add the group to one of them")
        super().add_param_group(param_group)  # the base class's own set-up, replaced at once

    def train(self) -> None:
        for part in self.parts.values():
            if callable(getattr(part, "train", None)):
                part.train()

    def eval(self) -> None:
        for part in self.parts.values():
            if callable(getattr(part, "eval", None)):
                part.eval()
