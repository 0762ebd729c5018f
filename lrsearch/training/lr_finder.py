"""The LR range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks", section 3.3).

Train a fresh model for a few hundred mini-batches while the learning rate grows exponentially, record the smoothed
loss, and stop once it diverges. The curve says, per optimizer, which learning rates learn at all and which blow
up; :func:`narrowed_lr_ranges` turns the suggestions into the lr intervals a study then searches
(``tune --lr-range auto``).

Unlike the range tests of fastai, Lightning and torch-lr-finder, this one compares optimizers on the same initial
weights and batches, treats a NaN loss as divergence rather than crashing or suggesting NaN, and never touches the
caller's model: each run builds its own from the task. torch and numpy are imported inside
functions, so importing this module (the CLI does) stays instant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrsearch.errors import TrialRuntimeError, UsageError
from lrsearch.training.trial import finite

if TYPE_CHECKING:
    from lrsearch.config.search_space import SearchSpace
    from lrsearch.config.spec import StudySpec
    from lrsearch.training.prepared import Prepared

DIVERGE_FACTOR = 4.0
"""The run stops once the smoothed loss exceeds this many times the best smoothed loss so far (fastai's rule)."""
MIN_POINTS = 5
"""Fewer usable points than this and a rule gives no suggestion: the next rule, or the fallback, decides."""
FLAT_DROP = 0.02
"""A curve whose minimum is less than this fraction below its plateau is flat: its "valley" would be noise."""
VALLEY_HEAD = 0.1
"""The valley starts where the loss has fallen this fraction of the way from the plateau to the minimum."""
VALLEY_AT = 2 / 3
"""Where along the valley, in log-lr, the suggestion lies: 0 its start, 1 the minimum."""


@dataclass
class LRFindResult:
    """One optimizer's range test.

    Attributes:
        suggested_lr: The lr to use (see :func:`suggest_lr` for the rule); always finite.
        min_loss_lr: Where the smoothed loss was lowest.
        diverged_at: The lr at which the loss turned non-finite or the smoothed loss passed 4x its best; ``None``
            when the test reached ``end`` without diverging.
        lrs: The lr of every recorded step.
        losses: The smoothed (bias-corrected EMA) loss of every recorded step; a non-finite loss is never recorded.
        rule: Which rule gave the suggestion: ``"valley"``, ``"steepest"`` or ``"min_loss/10"``.
        valley_lr: The valley rule's answer, or ``None`` where it had none.
        steepest_lr: The steepest-descent rule's answer, or ``None`` where it had none.
    """

    suggested_lr: float
    min_loss_lr: float
    diverged_at: float | None
    lrs: list[float]
    losses: list[float]
    rule: str = "valley"
    valley_lr: float | None = None
    steepest_lr: float | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict: non-finite numbers become ``None`` (``json.dumps`` would write bare ``NaN``)."""
        return {
            "suggested_lr": finite(self.suggested_lr),
            "min_loss_lr": finite(self.min_loss_lr),
            "diverged_at": finite(self.diverged_at),
            "lrs": [finite(v) for v in self.lrs],
            "losses": [finite(v) for v in self.losses],
        }


def lr_find(
    prepared_or_spec: Prepared | StudySpec | str | Path | dict[str, Any],
    optimizers: list[str] | tuple[str, ...] | None = None,
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = 100,
    smoothing: float = 0.05,
    diverge_factor: float = DIVERGE_FACTOR,
) -> dict[str, LRFindResult]:
    """Run the LR range test for each optimizer of a study and suggest an lr for each.

    Every optimizer starts from the same weights (``torch.manual_seed(train.seed)`` before ``task.model()``) and
    sees the same batches (``train.batch_size``, reshuffled with a fixed seed each pass over the data), so the
    curves are comparable. Non-lr hyperparameters are the study's fixed values where it fixes them and the preset
    defaults (the textbook's) otherwise. A pair of optimizers (Muon and AdamW) sweeps both lrs together, in their
    textbook ratio; a Schedule-Free optimizer runs in train mode, without its warm-up. A learning-rate-free
    optimizer (Prodigy) has no lr to test: the study's are skipped, and asking for one is refused. The global torch
    RNG is left as it was.

    Args:
        prepared_or_spec: A :class:`~lrsearch.training.prepared.Prepared` (data already loaded, reused as is), or a
            study file path, its parsed dict, or a :class:`~lrsearch.config.spec.StudySpec` (loaded here).
        optimizers: Preset names to test; default: the study's ``search.optimizers``.
        start: The first step's lr.
        end: The lr of the last step, if the run gets that far.
        steps: Mini-batches (one optimizer step each) from ``start`` to ``end``.
        smoothing: Weight of the newest loss in the exponential moving average (torch-lr-finder's 0.05).
        diverge_factor: Stop once the smoothed loss exceeds this multiple of its best.

    Returns:
        ``{optimizer: LRFindResult}`` in the order tested.

    Raises:
        UsageError: bad arguments or an unknown optimizer.
        TrialRuntimeError: the loss is non-finite at the very first step, before any update: the task is broken,
            whatever the lr.

    Example:
        >>> results = lr_find("studies/digits-mlp.yaml", optimizers=["adam", "sgd"], steps=40)
        >>> sorted(results), 1e-6 < results["adam"].suggested_lr < 1.0
        (['adam', 'sgd'], True)
    """
    import torch

    from lrsearch.config.overrides import resolve_spec
    from lrsearch.config.presets import PRESETS
    from lrsearch.training.prepared import Prepared, prepare

    problems = [f"need 0 < start < end (got start={start}, end={end})"] if not 0 < start < end < math.inf else []
    problems += [f"steps must be at least 2 (got {steps})"] if steps < 2 else []
    problems += [f"smoothing must be in (0, 1] (got {smoothing})"] if not 0 < smoothing <= 1 else []
    problems += [f"diverge_factor must be > 1 (got {diverge_factor})"] if not diverge_factor > 1 else []
    if problems:
        raise UsageError("lr range test: " + "; ".join(problems))
    prepared = prepared_or_spec if isinstance(prepared_or_spec, Prepared) else prepare(resolve_spec(prepared_or_spec))
    spec = prepared.spec
    if prepared.task is None:
        raise UsageError(f"lr-find trains a Task, and task.function {spec.task.function!r} is a training function "
                         "(allowed: a built-in task or task.entrypoint)")
    names = list(optimizers) if optimizers else [n for n in spec.search.optimizers if PRESETS[n].step_size == "lr"]
    unknown = [name for name in names if name not in PRESETS]
    if unknown:
        raise UsageError(f"optimizer {unknown[0]!r} is not known (allowed: {', '.join(PRESETS)})")
    lr_free = [name for name in names if PRESETS[name].step_size != "lr"]
    if lr_free:
        raise UsageError(f"optimizer {lr_free[0]!r} sets its own step size (lr stays 1; its "
                         f"{PRESETS[lr_free[0]].step_size} is searched instead): it has no lr to range-test")
    problems = [problem for name in names if (problem := PRESETS[name].problem())]
    if problems:
        raise UsageError(problems[0])
    space = spec.search.space()
    device = prepared.data.device
    results: dict[str, LRFindResult] = {}
    # fork_rng: seeding here must not change the random numbers the caller draws next.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for name in names:
            results[name] = _range_test(prepared, name, fixed_params(space, name), start, end, steps, smoothing,
                                        diverge_factor)
    return results


def fixed_params(space: SearchSpace, optimizer: str) -> dict[str, float]:
    """Non-lr hyperparameters: the study's fixed value, else the preset default (torch's), never a sampled one."""
    from lrsearch.config.presets import PRESETS, Range

    defaults = PRESETS[optimizer].defaults
    params: dict[str, float] = {}
    for name, value in space.hyperparameters(optimizer).items():
        if name == "lr":
            continue
        if not isinstance(value, Range):
            params[name] = float(value)
        elif name in defaults:
            params[name] = defaults[name]
    return params


def _range_test(
    prepared: Prepared, optimizer: str, params: dict[str, float], start: float, end: float, steps: int,
    smoothing: float, diverge_factor: float,
) -> LRFindResult:
    import torch

    from lrsearch.config.presets import PRESETS
    from lrsearch.training.optimizers import build
    from lrsearch.training.precision import MixedPrecision

    task, data, seed = prepared.task, prepared.data, prepared.spec.train.seed
    torch.manual_seed(seed)  # the same initial weights for every optimizer, as every trial of a study gets
    model = task.model().to(data.device)
    model.train()
    params = {k: v for k, v in params.items() if k != "warmup_fraction"}  # the sweep is the warm-up
    preset = PRESETS[optimizer]
    if preset.hidden_only:  # AdamW's lr for the rest follows Muon's, in the textbook ratio
        params["aux_lr"] = start * preset.defaults["aux_lr"] / preset.textbook_lr
    opt = build({"optimizer": optimizer, "params": {**params, "lr": start}}, model, hidden_weights=task.hidden_weights
                ).optimizer
    ratios = [group["lr"] / start for group in opt.param_groups]  # a pair's lrs keep their textbook ratio
    amp = MixedPrecision(prepared.spec.train.precision, data.device, opt)  # the precision the trials train in
    batches = data.cycled_batches(prepared.spec.train.batch_size, seed)
    ratio = math.log(end / start) / (steps - 1)

    lrs: list[float] = []
    losses: list[float] = []
    diverged_at: float | None = None
    average, best = 0.0, math.inf
    for step in range(steps):
        lr = start * math.exp(ratio * step)
        for group, share in zip(opt.param_groups, ratios, strict=True):
            group["lr"] = lr * share
        inputs, targets = next(batches)
        with amp.autocast():
            loss = task.loss(model(inputs), targets)
        value = loss.item()  # the one host sync per step: divergence must be decided now
        if not math.isfinite(value):
            if step == 0:
                raise TrialRuntimeError(
                    f"lr range test ({optimizer}): the loss is {value} at the first step, before any update; "
                    "the task is broken at any lr"
                )
            diverged_at = lr
            break
        opt.zero_grad(set_to_none=True)
        amp.backward(loss)
        amp.step(opt)
        # Bias-corrected EMA (as Adam corrects its moments): without it the first points are pulled toward 0.
        average = (1 - smoothing) * average + smoothing * value
        smoothed = average / (1 - (1 - smoothing) ** (step + 1))
        lrs.append(lr)
        losses.append(smoothed)
        best = min(best, smoothed)
        # best + (f - 1)|best| is f * best for a positive loss and still a margin above it for a negative one.
        if not math.isfinite(smoothed) or smoothed > best + (diverge_factor - 1) * abs(best):
            diverged_at = lr
            break
    return curve_result(lrs, losses, diverged_at, start, end)


def curve_result(lrs: list[float], losses: list[float], diverged_at: float | None, start: float,
                 end: float) -> LRFindResult:
    """The result of a recorded curve: :func:`suggest_lr`'s answer, else ``min_loss_lr / 10``, within [start, end]."""
    finite = [i for i, v in enumerate(losses) if math.isfinite(v)]
    min_loss_lr = lrs[min(finite, key=losses.__getitem__)] if finite else start
    suggested, rule, valley, steepest = suggest_lr(lrs, losses)
    if suggested is None:
        suggested, rule = min_loss_lr / 10, "min_loss/10"
    suggested = min(max(suggested, start), end)  # min_loss/10 may fall below start: stay in the tested range
    return LRFindResult(suggested, min_loss_lr, diverged_at, lrs, losses, rule, valley, steepest)


def suggest_lr(lrs: list[float], losses: list[float]) -> tuple[float | None, str, float | None, float | None]:
    """Suggest an lr from a range-test curve: the valley rule, cross-checked by the steepest descent.

    Both rules see only the finite points recorded before divergence, so a NaN loss merely ends the curve.

    - **valley**, after fastai's default rule: the longest decreasing subsequence of the smoothed loss, cut at the
      lowest loss and with its flat head dropped (it starts where 10% of the fall from the plateau, the median
      of the curve's first tenth, is done); the suggestion lies 2/3 of the way along it in log-lr. The minimum
      sits just below the lrs that blow up; 2/3 stays a third of the descent's span below that edge.
    - **steepest** (torch-lr-finder's rule): the most negative slope d loss / d log10(lr), skipping the first
      and last 10% of the points (the EMA's start-up and the blow-up).

    The valley is returned: it uses only the ordering of the losses, so it is robust to noise and to the loss's
    scale, while the steepest point is a derivative of a noisy curve that one lucky batch moves by a decade (on
    digits over 3 seeds x 50/100/200 steps, each optimizer's valley suggestions span a factor under 4, its
    steepest ones up to 400), and it marks where learning starts, the low end of the useful range. Steepest is
    kept as a cross-check (in :class:`LRFindResult`) and answers when the valley is under ``MIN_POINTS`` points
    long. A curve too short (under ``MIN_POINTS`` points) or flat (less than 2% below its plateau) gets no
    suggestion: the caller falls back to ``min_loss_lr / 10``, the usual rule of thumb.

    Args:
        lrs: Increasing learning rates, log-spaced.
        losses: The smoothed loss at each; non-finite values are ignored.

    Returns:
        ``(suggestion or None, rule name, valley lr or None, steepest lr or None)``.

    Example:
        >>> lrs = [10 ** (-5 + i / 10) for i in range(40)]
        >>> losses = [2.0 - 1.5 / (1 + math.exp(-(i - 20) / 3)) for i in range(40)]
        >>> suggestion, rule, _, _ = suggest_lr(lrs, losses)
        >>> rule, 1e-4 < suggestion < 1e-1
        ('valley', True)
    """
    import numpy as np

    x = np.log10(np.asarray(lrs, dtype=np.float64))
    y = np.asarray(losses, dtype=np.float64)
    keep = np.isfinite(y) & np.isfinite(x)
    x, y = x[keep], y[keep]
    if len(y) < MIN_POINTS:
        return None, "min_loss/10", None, None
    # The plateau's level: the median of the first tenth, not the first point, which is one noisy batch (the
    # bias-corrected EMA starts as a single loss).
    top = float(np.median(y[: max(MIN_POINTS, len(y) // 10)]))
    if top - y.min() < FLAT_DROP * abs(top):
        return None, "min_loss/10", None, None
    valley, steepest = _valley(x, y, top), _steepest(x, y)
    if valley is not None:
        return valley, "valley", valley, steepest
    if steepest is not None:
        return steepest, "steepest", valley, steepest
    return None, "min_loss/10", None, None


def _valley(x: Any, y: Any, top: float) -> float | None:
    import numpy as np

    # Only up to the lowest loss: past it, noise on the way up can extend a subsequence beyond the minimum.
    n = int(np.argmin(y)) + 1
    # Longest strictly decreasing subsequence, O(n^2) with the inner loop in numpy (n is a few hundred).
    length = np.ones(n, dtype=np.int64)
    previous = np.full(n, -1, dtype=np.int64)
    for i in range(1, n):
        higher = np.flatnonzero(y[:i] > y[i])
        if len(higher):
            j = higher[np.argmax(length[higher])]  # the earliest of the longest: the valley starts early
            length[i], previous[i] = length[j] + 1, j
    chain = [n - 1]  # the lowest point ends the longest subsequence: it extends any other
    while previous[chain[-1]] >= 0:
        chain.append(int(previous[chain[-1]]))
    chain.reverse()
    # The subsequence also threads through the plateau of too-small lrs, where the loss inches down over decades;
    # measured from there, 2/3 would land on the plateau. The valley starts where VALLEY_HEAD of the drop is done.
    threshold = top - VALLEY_HEAD * (top - y[n - 1])
    valley = [i for i in chain if y[i] <= threshold]
    if len(valley) < MIN_POINTS:
        return None
    first, last = valley[0], valley[-1]
    # Interpolate in log-lr, so the suggestion does not depend on which points the subsequence skipped.
    return float(10 ** (x[first] + VALLEY_AT * (x[last] - x[first])))


def _steepest(x: Any, y: Any) -> float | None:
    import numpy as np

    skip = max(1, len(y) // 10)
    x, y = x[skip:-skip], y[skip:-skip]
    if len(y) < MIN_POINTS:
        return None
    slope = np.gradient(y, x)
    i = int(np.argmin(slope))
    return float(10 ** x[i]) if slope[i] < 0 else None


def narrowed_lr_ranges(results: dict[str, LRFindResult], space: SearchSpace) -> dict[str, tuple[float, float]]:
    """The lr interval to search per optimizer: one decade either side of the suggestion, inside the study's.

    ``[suggested / 10, suggested * 10]`` is clipped to ``space.lr_range(optimizer)``. Where that leaves nothing
    (the suggestion lies more than a decade outside the study's interval), the study's interval is trusted over
    the test and the two decades at the edge nearest the suggestion are searched: ``[low, min(high, 100 low)]``
    below it, ``[max(low, high / 100), high]`` above it. A fixed lr (``low == high``) stays fixed.

    Example:
        >>> from lrsearch.config.search_space import SearchSpace
        >>> result = LRFindResult(0.02, 0.05, 0.3, [], [])
        >>> narrowed_lr_ranges({"adam": result}, SearchSpace(("adam",)))  # adam's preset lr range is [1e-5, 0.1]
        {'adam': (0.002, 0.1)}
    """
    ranges: dict[str, tuple[float, float]] = {}
    for optimizer, result in results.items():
        low, high = space.lr_range(optimizer)
        suggested = result.suggested_lr
        lo, hi = max(low, suggested / 10), min(high, suggested * 10)
        if low == high or lo < hi:
            ranges[optimizer] = (low, high) if low == high else (lo, hi)
        elif suggested * 10 <= low:
            ranges[optimizer] = (low, min(high, low * 100))
        else:
            ranges[optimizer] = (max(low, high / 100), high)
    return ranges
