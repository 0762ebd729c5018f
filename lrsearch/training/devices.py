"""Where trials run: the training device, how many ranks train a trial, which GPUs each ``--workers`` process
sees, and the torchrun launch this process is part of. Checks here run before anything is created, so a bad value
is one line with exit code 2."""

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


FAKE_GPUS_ENV = "LRSEARCH_FAKE_GPUS"
"""``LRSEARCH_FAKE_GPUS=N`` makes :func:`visible_gpus` report N GPUs whatever torch finds: it tests how workers
are given GPUs on a machine without any. Only the assignment believes it; training uses the devices torch sees."""


def visible_gpus() -> list[str]:
    """The GPUs this process can hand to workers, as ``CUDA_VISIBLE_DEVICES`` entries (indices, or the UUIDs it
    already lists), in order; none without CUDA (see ``FAKE_GPUS_ENV`` for tests)."""
    fake = os.environ.get(FAKE_GPUS_ENV)
    if fake is not None:
        if not fake.isdigit():
            raise UsageError(f"{FAKE_GPUS_ENV}={fake!r}: must be a number of GPUs")
        count = int(fake)
    else:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(index) for index in range(count)]
    return [entry.strip() for entry in listed.split(",") if entry.strip()][:count]


def parse_workers(value: str | int) -> int | str:
    """``--workers``: a positive integer, or ``auto``.

    Raises:
        UsageError: anything else.
    """
    if value == "auto":
        return "auto"
    text = str(value)
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"--workers must be a positive integer (got {text}) or 'auto' (one per visible GPU)")
    return int(text)


def assign_gpus(workers: int | str, device: str, nproc_per_trial: int | str, gpus: list[str]) -> list[list[str]]:
    """The GPUs each ``--workers`` process sees, one list per worker (its ``CUDA_VISIBLE_DEVICES``; empty when the
    workers train on the CPU, where they see what this process sees).

    Workers train on GPUs when ``device`` is ``cuda`` or ``auto`` and ``gpus`` is not empty. Each worker then gets
    its own ``M`` GPUs (``M`` = ``nproc_per_trial``; ``auto`` = all of them), disjoint from every other worker's,
    in the order ``gpus`` lists them; ``workers: auto`` is as many workers as there are sets of ``M`` (one per GPU
    for single-process trials), and 1 on the CPU.

    Raises:
        UsageError: ``workers`` x ``M`` exceeds the visible GPUs, or several workers for one named GPU (``cuda:N``).
    """
    count = parse_workers(workers)
    if device.startswith("cuda:") and count != 1:
        raise UsageError(f"train.device {device!r}: several workers each get GPUs of their own; set train.device to "
                         "'cuda' or 'auto' and choose the GPUs with CUDA_VISIBLE_DEVICES")
    if device not in ("cuda", "auto") or not gpus:
        return [[] for _ in range(1 if count == "auto" else int(count))]
    per_worker = len(gpus) if nproc_per_trial == "auto" else int(nproc_per_trial)
    count = max(1, len(gpus) // per_worker) if count == "auto" else int(count)
    if count * per_worker > len(gpus):
        raise UsageError(f"--workers {count} x --nproc-per-trial {per_worker} needs {count * per_worker} GPUs, one "
                         f"per rank; {len(gpus)} are visible ({','.join(gpus)})")
    return [gpus[worker * per_worker : (worker + 1) * per_worker] for worker in range(count)]


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
