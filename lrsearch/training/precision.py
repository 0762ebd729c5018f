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
        >>> with amp.autocast():
        ...     loss = loss_fn(model(x), y)
        >>> amp.backward(loss)
        >>> stepped = amp.step(optimizer)     # False: fp16 skipped this step (its gradients overflowed)
    """

    def __init__(self, precision: str, device: torch.device, optimizer: torch.optim.Optimizer) -> None:
        import torch

        self.precision, self.device = precision, device
        self.scaler = torch.amp.GradScaler(device.type, init_scale=FP16_INITIAL_SCALE) if precision == "fp16" \
            else None
        self._steps = 0
        if self.scaler is not None:
            optimizer.register_step_post_hook(self._count)  # the scaler calls step() only when it does not skip

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.precision, self.device)

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """The optimizer step; False when fp16's scaler skipped it (overflowed gradients)."""
        if self.scaler is None:
            optimizer.step()
            return True
        before = self._steps
        self.scaler.step(optimizer)
        self.scaler.update()
        return self._steps > before

    def _count(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._steps += 1
