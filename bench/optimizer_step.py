"""Optimizer step time: the implementation lrsearch picks vs torch's default, for every optimizer preset.

lrsearch builds every trial's optimizer with ``lrsearch.training.optimizers.constructor`` + ``create_optimizer``, which
tries ``fused=True``, then ``foreach=True``. The baseline is the same class constructed with neither argument
(torch's default: on CPU the per-tensor for-loop). The model is an MLP of ``--layers`` ``--width`` x ``--width``
float32 Linear layers (weights and biases); the gradients are populated once with random values and only
``optimizer.step()`` is timed.

Method: per round, each implementation runs a block of steps (two untimed steps that bring its tensors back into
the caches, then ``--block-ms`` worth of steps timed one by one; the block's figure is its fastest step), the order
of the blocks rotating every round; the speedup is the median over rounds of the per-round ratio default/picked.
Fastest-in-block drops steps hit by a context switch (other work on the machine), the median over rounds drops
rounds where a whole block was disturbed; the same ratio of block medians ("typical") is reported too and shows
how much the machine's load inflates the figures. A third contender, the picked implementation over ONE
flat tensor holding as many elements as the whole model, has no per-tensor overhead at all: default/flat is the
ceiling of any speedup torch can give on this machine (what is left is memory traffic). A missed target whose
ceiling is itself below the target is reported as a machine limit.

    python bench/optimizer_step.py [--quick] [--threads N] [--width 512] [--layers 8] [--strict]

Target: Adam, AdamW and SGD >= 3x on CPU. Headline: the minimum speedup over those three.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from typing import TYPE_CHECKING, Any

import _common

if TYPE_CHECKING:
    import torch

TARGET = 3.0
TARGET_PRESETS = ("adam", "adamw", "sgd")
LR = 1e-3


def preset_config(name: str) -> dict[str, Any]:
    """A trial configuration for the preset: lr 1e-3, every other hyperparameter at the preset's default
    (torch's defaults; momentum 0.9 for the momentum/nesterov presets, weight decay 1e-2 for AdamW)."""
    from lrsearch.config.search_space import PRESETS

    preset = PRESETS[name]
    params = {"lr": LR}
    params.update({k: v for k, v in preset.defaults.items() if k in preset.hyperparameters})
    return {"optimizer": name, "params": params, "schedule": {"name": "constant"}}


def make_params(width: int, layers: int, seed: int = 0) -> list[torch.Tensor]:
    """The MLP's parameters (fresh tensors, same values for the same seed) with random gradients."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    params = []
    for _ in range(layers):
        for shape in ((width, width), (width,)):
            p = torch.nn.Parameter(torch.randn(*shape, generator=gen) * 0.05)
            p.grad = torch.randn(*shape, generator=gen)
            params.append(p)
    return params


def flat_param(numel: int, seed: int = 0) -> list[torch.Tensor]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(numel, generator=gen) * 0.05)
    p.grad = torch.randn(numel, generator=gen)
    return [p]


def torch_default_resolution(params: list[torch.Tensor]) -> str:
    """What torch's default resolves to for these parameters (private torch API; informative only)."""
    try:
        from torch.optim.optimizer import _default_to_fused_or_foreach

        fused, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    except Exception as exc:  # private API: may change between torch versions
        return f"unknown ({type(exc).__name__})"
    return "fused" if fused else "foreach" if foreach else "for-loop"


def time_block(optimizer: torch.optim.Optimizer, reps: int, warm: int = 2) -> list[float]:
    """Seconds of each of ``reps`` consecutive ``optimizer.step()`` calls, after ``warm`` untimed ones (they bring
    this optimizer's tensors back into the caches the other contenders' blocks evicted)."""
    for _ in range(warm):
        optimizer.step()
    clock = time.perf_counter
    out = []
    for _ in range(reps):
        start = clock()
        optimizer.step()
        out.append(clock() - start)
    return out


def measure(name: str, width: int, layers: int, rounds: int, block_s: float) -> dict[str, Any]:
    import torch

    from lrsearch.training.optimizers import constructor, create_optimizer

    torch_class, kwargs = constructor(preset_config(name))
    cls = getattr(torch.optim, torch_class)
    default_params = make_params(width, layers)
    contenders: dict[str, torch.optim.Optimizer] = {"default": cls(default_params, **kwargs)}
    contenders["picked"], implementation = create_optimizer(torch_class, kwargs, make_params(width, layers))
    numel = sum(p.numel() for p in default_params)
    contenders["flat"], _ = create_optimizer(torch_class, kwargs, flat_param(numel), implementation)

    for optimizer in contenders.values():  # state allocation, caches, lazy initialisation
        for _ in range(3):
            optimizer.step()
    reps = max(5, round(block_s / max(_common.median(time_block(contenders["default"], 5)), 1e-6)))
    order = list(contenders)
    fast: dict[str, list[float]] = {key: [] for key in contenders}  # per block: its fastest step
    typical: dict[str, list[float]] = {key: [] for key in contenders}  # per block: its median step
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            rotated = order[r % len(order):] + order[: r % len(order)]
            for key in rotated:
                block = time_block(contenders[key], reps)
                fast[key].append(min(block))
                typical[key].append(_common.median(block))
    finally:
        if gc_was_enabled:
            gc.enable()

    def per_round(times: dict[str, list[float]], over: str) -> list[float]:
        return [d / o for d, o in zip(times["default"], times[over], strict=True)]

    ratios = per_round(fast, "picked")
    return {
        "preset": name,
        "torch_class": torch_class,
        "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
        "implementation": implementation,
        "torch_default_resolves_to": torch_default_resolution(default_params),
        "numel": numel,
        "tensors": len(default_params),
        "reps_per_block": reps,
        "rounds": rounds,
        "default_ms": _common.median(fast["default"]) * 1e3,
        "picked_ms": _common.median(fast["picked"]) * 1e3,
        "flat_ms": _common.median(fast["flat"]) * 1e3,
        "speedup": _common.median(ratios),
        "speedup_min_round": min(ratios),
        "speedup_max_round": max(ratios),
        "ceiling": _common.median(per_round(fast, "flat")),
        "speedup_typical": _common.median(per_round(typical, "picked")),
        "default_typical_ms": _common.median(typical["default"]) * 1e3,
        "picked_typical_ms": _common.median(typical["picked"]) * 1e3,
        "fastest_step_ms": {k: [t * 1e3 for t in v] for k, v in fast.items()},
        "median_step_ms": {k: [t * 1e3 for t in v] for k, v in typical.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and shorter blocks")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: usable cores)")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=None, help="default 15, --quick 7")
    parser.add_argument("--block-ms", type=float, default=None, help="length of one timed block (default 40, "
                        "--quick 15)")
    parser.add_argument("--strict", action="store_true", help="exit 1 on a miss even when the machine limits it")
    args = parser.parse_args(argv)

    import torch

    from lrsearch.config.search_space import PRESETS

    threads = args.threads or _common.usable_cores()
    torch.set_num_threads(threads)
    rounds = args.rounds or (7 if args.quick else 15)
    block_s = (args.block_ms or (15.0 if args.quick else 40.0)) / 1e3
    info = _common.machine_info(torch_threads=torch.get_num_threads())
    _common.print_machine(info)
    print(f"model: {args.layers} x Linear({args.width}, {args.width}) float32, random grads; "
          f"{rounds} interleaved rounds, blocks of ~{block_s * 1e3:.0f} ms; speedup = median over rounds of "
          "default/picked (fastest step of each block)")

    results = []
    for name in PRESETS:
        result = measure(name, args.width, args.layers, rounds, block_s)
        results.append(result)
        print(f"  {name:9s} {result['implementation']:8s} {result['speedup']:.2f}x", flush=True)

    rows, notes, failed = [], [], False
    for r in results:
        targeted = r["preset"] in TARGET_PRESETS
        met = r["speedup"] >= TARGET
        limited = not met and r["ceiling"] < TARGET
        r["target"] = TARGET if targeted else None
        r["verdict"] = _common.verdict(met, limited) if targeted else "-"
        if targeted and not met:
            failed = failed or args.strict or not limited
        rows.append([r["preset"], r["torch_class"], r["implementation"], r["torch_default_resolves_to"],
                     r["default_ms"], r["picked_ms"], r["flat_ms"], f"{r['speedup']:.2f}x",
                     f"{r['speedup_min_round']:.2f}-{r['speedup_max_round']:.2f}", f"{r['speedup_typical']:.2f}x",
                     f"{r['ceiling']:.2f}x",
                     r["verdict"]])
    worst = min((r for r in results if r["preset"] in TARGET_PRESETS), key=lambda r: r["speedup"])
    for r in results:
        if r["preset"] in TARGET_PRESETS and r["verdict"].startswith("MISSED"):
            if r["ceiling"] < TARGET:
                notes.append(
                    f"MACHINE LIMIT: {r['preset']}: even the {r['implementation']} kernel over one flat tensor of "
                    f"{r['numel']:,} elements (no per-tensor overhead) is only {r['ceiling']:.2f}x faster than "
                    f"the default loop here, so {TARGET:g}x is out of reach for any implementation torch has, on "
                    f"this machine at this size: what every implementation pays is the memory traffic (large "
                    f"tensors) or Optimizer.step's fixed per-call cost (small ones), not the {r['tensors']} "
                    f"per-tensor ops (picked reaches {r['speedup'] / r['ceiling']:.0%} of that ceiling)."
                )
            else:
                notes.append(
                    f"MISSED: {r['preset']}: {r['speedup']:.2f}x; one {r['implementation']} kernel over a single flat "
                    f"tensor would give {r['ceiling']:.2f}x here, so the pick reaches "
                    f"{r['speedup'] / r['ceiling']:.0%} of what torch can do; the rest is per-tensor overhead over "
                    f"the {r['tensors']} tensors."
                )
    slower = [r["preset"] for r in results if r["speedup"] < 1.0]
    if slower:
        notes.append(f"note: lrsearch's pick is SLOWER than torch's default for: {', '.join(slower)} "
                     "(speedup < 1x).")
    notes.append("ms: per block its fastest step, median over rounds; speedup: median over rounds of default/picked "
                 "of those; typical: the same from each block's median step (inflated by load); ceiling: default / "
                 "(picked implementation over ONE flat tensor of all elements).")
    headline = (f"headline: min speedup over adam/adamw/sgd = {worst['speedup']:.2f}x ({worst['preset']}; "
                f"target >= {TARGET:g}x, {worst['verdict']}), torch threads {threads}")
    path = _common.write_results("optimizer_step", {
        "bench": "optimizer_step", "machine": info,
        "settings": {"width": args.width, "layers": args.layers, "threads": threads, "rounds": rounds,
                     "block_ms": block_s * 1e3, "quick": args.quick, "lr": LR},
        "target": {"presets": TARGET_PRESETS, "min_speedup": TARGET},
        "results": results,
        "headline": {"min_speedup": worst["speedup"], "preset": worst["preset"], "verdict": worst["verdict"]},
        "passed": not failed,
    })
    notes.append(f"results: {path}")
    _common.print_table(
        ["preset", "class", "picked", "torch default", "default ms", "picked ms", "flat ms", "speedup",
         "round range", "typical", "ceiling", "target"],
        rows, headline, notes,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
