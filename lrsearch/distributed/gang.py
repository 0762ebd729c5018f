"""A local gang: ``train.nproc_per_trial: N`` trains every trial with DDP over N processes on this machine.

The ``tune`` process is rank 0, the only rank that talks to Optuna and MLflow. :func:`open_gang` starts N-1
followers (``python -m lrsearch.distributed.follower``) once per ``tune``; each loads the data and joins the process
group once, then trains each trial that rank 0 announces. The backend is gloo on CPU, or NCCL on CUDA (one GPU per
rank) with a gloo group for the control collectives. A trial that fails on any rank restarts the gang.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrsearch.distributed.collective import DdpCollective
from lrsearch.distributed.follower import STARTUP_TIMEOUT
from lrsearch.distributed.processes import describe_exit, stop_processes
from lrsearch.errors import TrialRuntimeError, UsageError

if TYPE_CHECKING:
    from lrsearch.training.prepared import Prepared
    from lrsearch.training.trial import Collective, TrialSettings

logger = logging.getLogger(__name__)

STOP_GRACE = 5.0
"""Seconds followers get to exit after the stop message before they are terminated."""
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class GangCollective(DdpCollective):
    """Rank 0 of a local gang: its collective, and the followers it starts once and again after a failure."""

    def __init__(self, prepared: Prepared, nproc: int) -> None:
        device = prepared.torch_device
        if device.type == "cuda" and device.index not in (None, 0):
            raise UsageError(f"rank 0 trains on {device}; a gang of {nproc} ranks uses cuda:0..cuda:{nproc - 1}")
        super().__init__(0, nproc, device, prepared.spec.train.rank_timeout)
        self.prepared = prepared
        self.followers: list[subprocess.Popen[bytes]] = []
        self.closed = False

    @property
    def follower_pids(self) -> list[int]:
        """Process ids of the followers, rank 1 first."""
        return [process.pid for process in self.followers]

    @property
    def broken(self) -> bool:
        return False  # a failed trial restarts the gang

    def begin_trial(self, config: dict[str, Any], settings: TrialSettings) -> None:
        """Restart a dead or failed gang if needed, then announce the trial to every rank.

        Raises:
            TrialRuntimeError: the gang cannot start.
        """
        if self.closed:
            raise TrialRuntimeError("the DDP gang is closed")
        if not self.healthy():
            self.restart()
        super().begin_trial(config, settings)

    def recover(self) -> None:
        """After a failed trial: restart the gang. Never raises, so the trial keeps its own error; if the restart
        fails, the next :meth:`begin_trial` tries again."""
        for rank, process in enumerate(self.followers, start=1):
            if process.poll() is not None:
                logger.warning("rank %d (pid %d) %s", rank, process.pid, describe_exit(process.returncode))
        logger.warning("a trial failed; restarting the gang of %d ranks", self.world_size)
        try:
            self.restart()
        except Exception as exc:  # reported again, as the trial's error, by the next begin_trial
            logger.error("could not restart the gang (the next trial tries again): %s", exc)

    def close(self, graceful: bool = True) -> None:
        """Stop the followers (``graceful``: ask them first) and leave the group. Safe to call more than once."""
        if not self.closed:
            self.closed = True
            self._teardown(graceful)

    def start(self) -> None:
        import torch.distributed as dist
        if self.backend == "nccl":
            # By default a timed-out NCCL op tears down the whole process, which here is the tune process. With 2,
            # NCCL only aborts the communicator: the trial fails and recover() restarts the gang.
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
        spec = self.prepared.spec
        store = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=self.timeout,
                              wait_for_workers=False)  # port 0: the OS picks a free port, so no race for one
        payload = (json.dumps({"spec": spec.model_dump(mode="json"), "source": spec.source}) + "\n").encode()
        # Followers must import what this process imports: this lrsearch (even an uninstalled checkout), and task
        # modules found through sys.path entries added at run time (the Python API, tests).
        path = os.pathsep.join(dict.fromkeys(p for p in [_PACKAGE_ROOT, *sys.path] if p and os.path.isdir(p)))
        for rank in range(1, self.world_size):
            command = [sys.executable, "-m", "lrsearch.distributed.follower",
                       *map(str, (rank, self.world_size, store.port, os.getpid()))]
            process = subprocess.Popen(command, stdin=subprocess.PIPE, env={**os.environ, "PYTHONPATH": path})
            self.followers.append(process)
            process.stdin.write(payload)  # type: ignore[union-attr]  # stdin stays open: EOF means we are gone
            process.stdin.flush()  # type: ignore[union-attr]
        self._await_ready(store)
        self.connect(store)

    def _await_ready(self, store: Any) -> None:
        deadline, pending = time.monotonic() + STARTUP_TIMEOUT, set(range(1, len(self.followers) + 1))
        while pending:
            for rank in sorted(pending):
                process = self.followers[rank - 1]
                if store.check([f"lrsearch/error/{rank}"]):
                    problem = store.get(f"lrsearch/error/{rank}").decode()
                    raise TrialRuntimeError(f"DDP rank {rank} could not start: {problem}")
                if store.check([f"lrsearch/ready/{rank}"]):
                    pending.discard(rank)
                elif process.poll() is not None:
                    raise TrialRuntimeError(f"DDP rank {rank} (pid {process.pid}) "
                                            f"{describe_exit(process.returncode)} while starting")
            if pending and time.monotonic() > deadline:
                raise TrialRuntimeError(f"DDP ranks {sorted(pending)} were not ready after {STARTUP_TIMEOUT:.0f} s")
            time.sleep(0.05)

    def healthy(self) -> bool:
        return self.channel is not None and all(p.poll() is None for p in self.followers)

    def restart(self) -> None:
        self._teardown(graceful=False)
        self.start()

    def _teardown(self, graceful: bool) -> None:
        if graceful and self.healthy():
            try:
                self.stop_others()
                deadline = time.monotonic() + STOP_GRACE
                for process in self.followers:
                    process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except Exception as exc:  # a rank that dies or lingers at the very end is terminated below
                logger.warning("DDP ranks did not stop cleanly: %s", exc)
        stop_processes(self.followers, grace=1.0)
        for process in self.followers:
            with contextlib.suppress(OSError):
                process.stdin.close()  # type: ignore[union-attr]
        self.followers = []
        self.leave()


@contextlib.contextmanager
def open_gang(prepared: Prepared, nproc: int) -> Iterator[Collective]:
    """Start ``nproc - 1`` local followers for the whole study, and yield rank 0's collective.

    With ``nproc == 1`` it yields ``SINGLE_PROCESS`` and starts nothing. A normal end tells the followers to stop.
    Any exception, KeyboardInterrupt included, terminates them. A follower whose parent dies gets SIGKILL from the
    kernel (PR_SET_PDEATHSIG) or exits when its stdin closes. Torch threads are the caller's to set: the ranks share
    this machine's cores.

    Raises:
        UsageError: ``train.batch_size`` is not divisible by ``nproc``.
        TrialRuntimeError: the followers cannot be started.

    Example:
        >>> with open_gang(prepared, 2) as collective:  # doctest: +SKIP
        ...     run_study(study, storage, prepared, observers, collective)
    """
    from lrsearch.training.devices import check_batch_size
    from lrsearch.training.trial import SINGLE_PROCESS
    if nproc == 1:
        yield SINGLE_PROCESS
        return
    check_batch_size(prepared.spec.train.batch_size, nproc)
    gang = GangCollective(prepared, nproc)
    try:
        gang.start()
        yield gang
    except BaseException:
        gang.close(graceful=False)
        raise
    else:
        gang.close(graceful=True)
