"""Mixed precision, ``train.precision``: ``fp32`` (the default), ``bf16`` or ``fp16``.

bf16 and fp16 run the forward pass and the loss under ``torch.autocast`` on the trial's device; weights, gradients
and the optimizer's state stay fp32. fp16 also scales the loss (``torch.amp.GradScaler``) so that small gradients
do not flush to zero; a step whose scaled gradients overflow is skipped and the scale lowered. A skipped step is
not divergence: the divergence rule looks at the loss, which the scale never touches.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from lrsearch.errors import UsageError

if TYPE_CHECKING:
    import torch

AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
FP16_INITIAL_SCALE = 2.0**16
"""The loss scale an fp16 trial starts from (torch's default); it halves at each overflow and grows back."""


def check_precision(precision: str, device: str) -> None:
    """Raise :class:`UsageError` when ``device`` cannot train in ``precision`` (bf16 on a GPU without it)."""
    if precision == "bf16" and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_bf16_supported():
            raise UsageError(f"train.precision bf16: {torch.cuda.get_device_name()} has no bf16 support "
                             "(allowed here: fp32, fp16)")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The context the forward pass and the loss run in: ``torch.autocast`` for bf16 and fp16, nothing for fp32."""
    import torch

    if precision not in AUTOCAST_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, AUTOCAST_DTYPES[precision]))


class MixedPrecision:
    """One trial's precision: its autocast context, and its backward and optimizer step (scaled for fp16).

    Example:
        >>> amp = MixedPrecision("bf16", torch.device("cpu"), optimizer)  # doctest: +SKIP
        >>> with amp.autocast():  # doctest: +SKIP
        ...     loss = loss_fn(model(x), y)
        >>> amp.backward(loss)  # doctest: +SKIP
        >>> amp.step(optimizer)  # doctest: +SKIP
        >>> amp.skipped_steps()  # fp16: steps skipped as their gradients overflowed  # doctest: +SKIP
        0
    """

    def __init__(self, precision: str, device: torch.device, optimizer: torch.optim.Optimizer) -> None:
        import torch

        self.precision, self.device = precision, device
        self.scaler = torch.amp.GradScaler(device.type, init_scale=FP16_INITIAL_SCALE) if precision == "fp16" \
            else None
        self._calls = self._stepped = 0
        self._found_inf: torch.Tensor | float = 0.0
        if self.scaler is not None:
            optimizer.register_step_post_hook(self._count)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.precision, self.device)

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self._calls += 1
        self.scaler.step(optimizer)
        self.scaler.update()

    def skipped_steps(self) -> int:
        """Steps fp16's scaler skipped so far (one host sync: call it when the trial ends)."""
        found = self._found_inf.item() if hasattr(self._found_inf, "item") else self._found_inf
        return self._calls - self._stepped + round(found)

    def _count(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        # The scaler calls step() only for a clean step, except for optimizers that take its found_inf flag and skip
        # inside their fused kernel: those report it here, added up on the device so that no step waits for it.
        self._stepped += 1
        found = getattr(optimizer, "found_inf", None)
        if found is not None:
            self._found_inf = self._found_inf + found
