"""Where trials run: the training device, how many ranks train a trial, and the torchrun launch this process is
part of. Checks here run before anything is created, so a bad value is one line with exit code 2."""

from __future__ import annotations

import os
from typing import Any

from lrsearch.errors import UsageError


def resolve_device(name: str) -> str:
    """``train.device``: ``auto`` is CUDA when available, else the CPU; a CUDA device that is missing is refused."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"train.device {name!r}: CUDA is not available here (allowed: auto, cpu)")
    return name


def resolve_nproc(value: int | str, device: str) -> int:
    """Ranks per trial from ``train.nproc_per_trial`` (an int, its string, or ``auto``: the number of visible GPUs
    on CUDA, 1 on CPU) and ``train.device``.

    Raises:
        UsageError: not a positive integer or ``auto``, more ranks than GPUs, or one GPU (``cuda:N``) for several.
    """
    device = resolve_device(device)
    if value == "auto":
        import torch
        return torch.cuda.device_count() if device.startswith("cuda") else 1
    nproc = int(value) if isinstance(value, int) or str(value).isdigit() else 0
    if nproc <= 0 or isinstance(value, bool):
        raise UsageError(f"nproc_per_trial: must be a positive integer or 'auto' (got {value!r})")
    if nproc > 1 and device.startswith("cuda"):
        import torch
        if device != "cuda":
            raise UsageError(f"nproc_per_trial {nproc} with device {device!r}: every rank needs its own GPU; "
                             "use device 'cuda' and choose the GPUs with CUDA_VISIBLE_DEVICES")
        if nproc > torch.cuda.device_count():
            raise UsageError(f"nproc_per_trial {nproc}: only {torch.cuda.device_count()} GPUs are visible "
                             "(one rank per GPU)")
    return nproc


def check_batch_size(batch_size: int, nproc: int) -> None:
    """Raise :class:`UsageError` when the global ``batch_size`` cannot be split evenly over ``nproc`` ranks."""
    if batch_size % nproc:
        below, above = batch_size // nproc * nproc, (batch_size // nproc + 1) * nproc
        raise UsageError(f"train.batch_size {batch_size} is not divisible by nproc_per_trial {nproc}: each rank "
                         f"trains batch_size / {nproc} samples of every global batch "
                         f"(try batch_size {f'{below} or {above}' if below else above})")


def torchrun_env() -> dict[str, Any] | None:
    """This process's torchrun launch: ``rank``, ``world_size``, ``local_rank``, ``local_world_size``,
    ``master_addr`` and ``master_port``. None when torchrun did not start it with several ranks."""
    env = os.environ
    if not all(name in env for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return None
    names = {"rank": "RANK", "world_size": "WORLD_SIZE", "local_rank": "LOCAL_RANK",
             "local_world_size": "LOCAL_WORLD_SIZE", "master_port": "MASTER_PORT"}
    try:
        found = {key: int(env.get(name, "1" if name == "LOCAL_WORLD_SIZE" else "0")) for key, name in names.items()}
    except ValueError as exc:
        raise UsageError(f"torchrun environment: {exc}") from None
    return {**found, "master_addr": env["MASTER_ADDR"]} if found["world_size"] > 1 else None
