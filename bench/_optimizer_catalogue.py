"""Every optimizer preset's step against fused AdamW on the same model, as a trial builds it: the second table of
``bench/optimizer_step.py`` (see its docstring for the method)."""

from __future__ import annotations

import gc
import math
import time
from typing import TYPE_CHECKING, Any

import _common

if TYPE_CHECKING:
    import torch

BASELINE = "fused AdamW"
HIDDEN = " (hidden only)"
MIN_BLOCK_STEPS = 3
SLOW_BLOCK_S = 1.5
WARM_BELOW_S = 5e-3
TOTAL_STEPS = 1000
"""The training length the catalogue's optimizers are built for (Schedule-Free's 5% warm-up: 50 steps)."""


def textbook_config(name: str) -> dict[str, Any]:
    """The preset at its textbook point (the default search's prior centre), constant schedule."""
    from lrsearch.config.presets import PRESETS

    preset = PRESETS[name]
    return {"optimizer": name, "params": {preset.step_size: preset.textbook_lr, **preset.defaults},
            "schedule": {"name": "constant"}}


def catalogue_model(width: int, layers: int, seed: int = 0) -> torch.nn.Sequential:
    """``layers`` Linear(width, width) with ReLU between (the last one is the output layer of the split rule), the
    same weights and gradients for the same seed."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    modules: list[torch.nn.Module] = []
    for i in range(layers):
        modules += [torch.nn.Linear(width, width)] + ([torch.nn.ReLU()] if i < layers - 1 else [])
    model = torch.nn.Sequential(*modules)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
            p.grad = torch.randn(p.shape, generator=gen)
    return model


class Stepper:
    """One contender of the catalogue table: an optimizer, the gradients it reads, its block length."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
        self.optimizer = optimizer
        self.grads = [(p.grad, p.grad.clone(), -p.grad) for p in params]
        self.flip = False
        # SOAP recomputes its preconditioner every 10 steps: a block is a whole number of these periods.
        self.period = max(int(g.get("precondition_frequency", 1)) for g in optimizer.param_groups)
        self.steps, self.warm = MIN_BLOCK_STEPS * self.period, 1

    def block(self, steps: int, warm: int | None = None) -> tuple[float, float, float]:
        """Seconds per ``optimizer.step()`` over ``steps`` consecutive steps after ``warm`` untimed ones: the mean
        over one period of each phase's median step (for a period of 1: the median step), the plain mean, the
        fastest. The gradients are restored before every step, untimed (Schedule-Free overwrites them)."""
        clock = time.perf_counter
        times = []
        warm = self.warm if warm is None else warm
        for i in range(warm + steps):
            self.flip = not self.flip
            for grad, positive, negative in self.grads:
                grad.copy_(negative if self.flip else positive)
            start = clock()
            self.optimizer.step()
            if i >= warm:
                times.append(clock() - start)
        phases = [_common.median(times[phase::self.period]) for phase in range(min(self.period, steps))]
        return sum(phases) / len(phases), sum(times) / steps, min(times)

    def calibrate(self, block_s: float) -> None:
        """Steps per block: about ``block_s`` of steps, at least ``MIN_BLOCK_STEPS`` steps or periods (fewer when
        they would take over ``SLOW_BLOCK_S``), a whole number of periods."""
        step, _, fastest = self.block(max(5, self.period * 2), warm=0)
        periods = max(1, min(MIN_BLOCK_STEPS, int(SLOW_BLOCK_S / (step * self.period))))
        # The fastest step sets the length: a calibration step slowed by other work must not shorten every block.
        wanted = max(periods * self.period, math.ceil(block_s / max(fastest, 1e-7)))
        self.steps = math.ceil(wanted / self.period) * self.period
        self.warm = 1 if step < WARM_BELOW_S else 0  # a slow step does not notice what the caches hold

    def finite(self) -> bool:
        return all(bool(p.isfinite().all()) for g in self.optimizer.param_groups for p in g["params"])


def catalogue_contenders(width: int, layers: int) -> tuple[dict[str, Stepper], dict[str, dict[str, Any]]]:
    """Fused AdamW, every preset as ``build`` makes it, and Muon's part alone against fused AdamW on the same
    hidden weights, each on its own copy of the model; and per contender what was built (or why not)."""
    from lrsearch.config.presets import PRESETS
    from lrsearch.training.optimizers import build, constructor, create_optimizer

    adamw = constructor(textbook_config("adamw")).kwargs
    fused = {"status": "ok", "torch_class": "AdamW", "implementation": "fused"}

    def fused_adamw(names: list[str] | None = None) -> Stepper:
        named = dict(catalogue_model(width, layers).named_parameters())
        params = [named[n] for n in names] if names is not None else list(named.values())
        return Stepper(create_optimizer("AdamW", adamw, params, "fused")[0], params)

    steppers, built = {BASELINE: fused_adamw()}, {BASELINE: dict(fused)}
    for name, preset in PRESETS.items():
        problem = preset.problem()
        if problem is not None:
            built[name] = {"status": "not installed", "why": problem}
            continue
        try:
            model = catalogue_model(width, layers)
            made = build(textbook_config(name), model, TOTAL_STEPS)
            steppers[name] = Stepper(made.optimizer, list(model.parameters()))
            if preset.hidden_only:  # its part alone, built the same way on another copy
                twin = catalogue_model(width, layers)
                alone = build(textbook_config(name), twin, TOTAL_STEPS)
                named = dict(twin.named_parameters())
                steppers[name + HIDDEN] = Stepper(alone.optimizer.parts["muon"],
                                                  [named[n] for n in alone.param_split["muon"]])
            for key in (name, name + HIDDEN):  # state allocation, SOAP's first eigenbasis, lazy initialisation
                if key in steppers:
                    steppers[key].block(1, warm=2)
        except Exception as exc:  # a preset that cannot build or step is this bench's failure, not its crash
            steppers.pop(name, None)
            steppers.pop(name + HIDDEN, None)
            built[name] = {"status": "FAILED", "why": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
            continue
        built[name] = {"status": "ok", "torch_class": preset.qualified_class, "implementation": made.implementation,
                       "config": textbook_config(name), "param_split": made.param_split}
        if name + HIDDEN in steppers:
            built[name + HIDDEN] = {**built[name], "implementation": made.implementation.split("+")[0]}
            steppers[BASELINE + HIDDEN] = fused_adamw(made.param_split["muon"])
            built[BASELINE + HIDDEN] = dict(fused)
    return steppers, built


def measure_catalogue(width: int, layers: int, rounds: int, block_s: float) -> dict[str, Any]:
    """Every preset's step over fused AdamW's on the same model, in interleaved rounds."""
    steppers, built = catalogue_contenders(width, layers)
    for stepper in steppers.values():
        stepper.calibrate(block_s)
    order = list(steppers)
    typical: dict[str, list[float]] = {key: [] for key in steppers}  # per block: see Stepper.block
    mean: dict[str, list[float]] = {key: [] for key in steppers}  # per block: its mean step
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            for key in order[r % len(order):] + order[: r % len(order)]:
                figures = steppers[key].block(steppers[key].steps)
                typical[key].append(figures[0])
                mean[key].append(figures[1])
    finally:
        if gc_was_enabled:
            gc.enable()
    for key, stepper in steppers.items():
        baseline = BASELINE + HIDDEN if key.endswith(HIDDEN) else BASELINE
        ratios = [m / b for m, b in zip(typical[key], typical[baseline], strict=True)]
        built[key].update({
            "baseline": baseline, "ms": _common.median(typical[key]) * 1e3, "vs_baseline": _common.median(ratios),
            "vs_baseline_min_round": min(ratios), "vs_baseline_max_round": max(ratios),
            "vs_baseline_of_means": _common.median([m / b for m, b in zip(mean[key], mean[baseline], strict=True)]),
            "mean_ms": _common.median(mean[key]) * 1e3, "steps_per_block": stepper.steps, "period": stepper.period,
            "params_finite_after": stepper.finite(),
            "block_ms": {"median": [t * 1e3 for t in typical[key]], "mean": [t * 1e3 for t in mean[key]]},
        })
    return {"width": width, "layers": layers, "rounds": rounds, "block_ms": block_s * 1e3,
            "total_steps": TOTAL_STEPS, "baseline": "torch.optim.AdamW(fused=True), lr 1e-3, weight decay 1e-2",
            "newton_schulz_ms": newton_schulz_matmul_ms(width), "presets": built}


def newton_schulz_matmul_ms(width: int) -> dict[str, float]:
    """One width x width matrix product in bfloat16 (what torch's Muon runs its Newton-Schulz iterations in) and in
    float32: why Muon's step costs what it does on a CPU without native bfloat16."""
    import torch

    x = torch.randn(width, width)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = x.to(dtype)
        times = []
        for _ in range(7):
            start = time.perf_counter()
            a @ a.T
            times.append(time.perf_counter() - start)
        out[str(dtype).removeprefix("torch.")] = _common.median(times[2:]) * 1e3
    return out


def catalogue_table(catalogue: dict[str, Any]) -> tuple[list[list[Any]], list[str], list[str]]:
    """The rows and notes of the catalogue table, and the presets that failed."""
    rows, notes, failed = [], [], []
    for key, r in catalogue["presets"].items():
        if r["status"] != "ok":
            rows.append([key, "-", "-", "-", "-", r["status"], "-", "-", "-", "-"])
            notes.append(f"{r['status']}: {key}: {r['why']}")
            failed += [key] if r["status"] == "FAILED" else []
            continue
        baseline = key in (BASELINE, BASELINE + HIDDEN)
        rows.append([key, r["torch_class"].removeprefix("torch.optim."), r["implementation"], r["ms"],
                     r["mean_ms"], "baseline" if baseline else f"{r['vs_baseline']:.2f}x",
                     "-" if baseline else f"{r['vs_baseline_min_round']:.2f}-{r['vs_baseline_max_round']:.2f}",
                     "-" if baseline else f"{r['vs_baseline_of_means']:.2f}x", r["steps_per_block"],
                     "hidden weights" if key.endswith(HIDDEN) else "whole model"])
        if not r["params_finite_after"]:
            notes.append(f"note: {key}: a parameter was not finite after the bench (timing of inf/nan arithmetic)")
    muon = catalogue["presets"].get("muon", {})
    if muon.get("param_split"):
        split = muon["param_split"]
        ns = catalogue["newton_schulz_ms"]
        notes.append(f"muon: Muon on {len(split['muon'])} hidden weights ({', '.join(split['muon'])}), fused AdamW on "
                     f"the other {len(split['adamw'])} parameters; its Newton-Schulz runs in bfloat16: one "
                     f"{catalogue['width']}x{catalogue['width']} product takes {ns['bfloat16']:.3g} ms here vs "
                     f"{ns['float32']:.3g} ms in float32 ({ns['bfloat16'] / ns['float32']:.0f}x)")
    notes.append("ms/step: per block its median step (SOAP: the mean over its 10-step period of each phase's "
                 "median), median over rounds; mean ms: each block's plain mean (inflated by load); vs fused AdamW: "
                 "median over rounds of preset/fused AdamW, each on its own copy of the same model; of means: the "
                 "same ratio from the block means; grads restored before every step, untimed")
    return rows, notes, failed
