"""Memory as a trial's result: recognising an out-of-memory error, releasing what the failed trial held, and the
peak memory a trial used (``peak_memory_mb``)."""

from __future__ import annotations

import gc
import resource
import sys
import traceback
from pathlib import Path

OUT_OF_MEMORY = "out of memory"
"""The ``fail_reason`` of a trial that ran out of memory."""
_CPU_ALLOCATION_FAILED = ("can't allocate memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")
"""What torch's RuntimeError says when an allocation outside its CUDA caching allocator fails (no OOM type)."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure: CUDA's ``OutOfMemoryError``, Python's ``MemoryError``, or
    torch's CPU allocator (a RuntimeError saying it cannot allocate)."""
    if isinstance(error, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _CPU_ALLOCATION_FAILED)


def release_memory(error: BaseException, device: str) -> None:
    """Free what a failed trial held: its frames (kept alive by the error's traceback), then torch's cached GPU
    blocks, so the next trial starts with the memory this one had."""
    traceback.clear_frames(error.__traceback__)
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


class PeakMemory:
    """The peak memory of what runs inside it, in MiB (:attr:`mb`): on CUDA the caching allocator's maximum
    allocated memory on ``device``; on the CPU this process's peak resident memory less the memory it held
    when entered (Linux resets the peak on entry; elsewhere the process's lifetime peak is the bound)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.mb: float | None = None
        self._start = 0

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._start = _status_bytes("VmRSS")
            _reset_peak_rss()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            import torch

            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak = _status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.mb = max(0, peak - self._start) / 2**20


def _status_bytes(field: str) -> int:
    """A ``/proc/self/status`` memory field in bytes; 0 where there is none (not Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS (VmHWM) to the current RSS
    except OSError:
        pass
