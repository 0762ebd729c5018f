"""Stopping child processes: DDP followers, ``--workers`` processes, the MLflow UI server and its workers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence


def stop_processes(processes: Sequence[subprocess.Popen], signum: int = signal.SIGTERM, grace: float = 1.0,
                   group: bool = False) -> None:
    """Send ``signum`` to each live process, give them ``grace`` seconds in all to exit, SIGKILL what is left, and
    reap every one.

    With ``group=True`` each process leads its own process group (``start_new_session=True``), the signals go to the
    whole group, and the group is SIGKILLed at the end whatever its leader did: children it started (a server's
    workers) may outlive it.
    """
    for process in processes:
        if process.poll() is None or group:
            _signal(process, signum, group)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass  # a stopped (SIGSTOP) or stuck process does not act on SIGTERM: killed below
        if process.poll() is None or group:
            _signal(process, signal.SIGKILL, group)
        process.wait()


def _signal(process: subprocess.Popen, signum: int, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)


def describe_exit(code: int | None) -> str:
    """How a process ended, in words: ``was killed by SIGKILL``, ``exited with code 1`` or ``is running``."""
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return "is running" if code is None else f"exited with code {code}"
