"""A non-zero rank: it trains every trial rank 0 announces, until rank 0 says stop.

Local followers of a gang run as ``python -m lrsearch.distributed.follower RANK WORLD_SIZE PORT PARENT_PID`` with
the study on stdin (started by :class:`lrsearch.distributed.gang.GangCollective`); torchrun's non-zero ranks run
:func:`lrsearch.distributed.torchrun.follow_torchrun`. Both load their data with :func:`prepare_follower` and
train with :func:`follow`. ``LRSEARCH_RANK_LOG=FILE`` makes them append a JSON line there for each trial.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import threading
from datetime import timedelta
from typing import TYPE_CHECKING

from lrsearch.errors import first_line

if TYPE_CHECKING:
    from lrsearch.config.spec import StudySpec
    from lrsearch.distributed.collective import DdpCollective
    from lrsearch.training.prepared import Prepared
    from lrsearch.training.trial import TrialOutcome

STARTUP_TIMEOUT = 300.0
"""Seconds a follower may take to import torch and load the data. ``rank_timeout`` covers only work in a trial."""
RANK_LOG_ENV = "LRSEARCH_RANK_LOG"


def prepare_follower(spec: StudySpec, local_rank: int, ranks_on_machine: int) -> Prepared:
    """Set this rank's torch threads (the ranks on one machine share its cores) and load its data on its device."""
    from lrsearch.training.prepared import prepare_rank
    from lrsearch.training.threads import configure_threads

    configure_threads(spec.train.threads, workers=ranks_on_machine)
    return prepare_rank(spec, local_rank)


def follow(prepared: Prepared, collective: DdpCollective) -> int:
    """Train each trial rank 0 announces until it says stop, then leave the group; return how many were trained.

    A trial's exception (a timed-out collective, a dead peer) propagates: the group is unusable after it, so exit.
    """
    from lrsearch.training.runner import train_trial
    trained = 0
    try:
        while (message := collective.receive()) is not None:
            outcome = train_trial(prepared.task, prepared.data, *message, collective=collective)
            trained += 1
            _log_trial(collective.rank, trained, outcome)
    finally:
        collective.leave()
    return trained


def _log_trial(rank: int, index: int, outcome: TrialOutcome) -> None:
    if path := os.environ.get(RANK_LOG_ENV):
        line = json.dumps({"rank": rank, "pid": os.getpid(), "trial": index, "epochs": len(outcome.history),
                           "stopped": outcome.stopped, "stopped_epoch": outcome.stopped_epoch,
                           "val_loss": outcome.final.get("val_loss")})
        with open(path, "a") as log:  # a single short append per line, so the lines of several ranks never mix
            log.write(line + "\n")


def _local_follower(argv: list[str]) -> int:
    """A local follower (``RANK WORLD_SIZE PORT PARENT_PID``, the study on stdin): join rank 0 and follow it."""
    rank, world_size, port, parent = map(int, argv)  # argv is written by GangCollective.start
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; rank 0 stops us
    payload = json.loads(sys.stdin.buffer.readline())
    threading.Thread(target=_exit_at_eof, daemon=True, name="lrsearch-parent-watch").start()
    import torch.distributed as dist

    from lrsearch.config.spec import spec_from_dict
    from lrsearch.distributed.collective import DdpCollective
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=STARTUP_TIMEOUT))
    try:
        spec = spec_from_dict(payload["spec"], payload["source"] or "<study>")
        spec.source = payload["source"]
        prepared = prepare_follower(spec, rank, world_size)
    except Exception as exc:  # rank 0 raises it as the reason the gang could not start
        store.set(f"lrsearch/error/{rank}", f"{type(exc).__name__}: {exc}")
        return 1
    collective = DdpCollective(rank, world_size, prepared.torch_device, spec.train.rank_timeout)
    store.set(f"lrsearch/ready/{rank}", "1")
    collective.connect(store)
    try:
        follow(prepared, collective)
    except Exception as exc:  # rank 0 fails the trial and starts a new gang; one line here says why
        print(f"lrsearch DDP rank {rank}: {type(exc).__name__}: {first_line(exc)}",
              file=sys.stderr)
        return 1
    return 0


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux); exit now if the parent is gone."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect: we were already re-parented
        os._exit(1)


def _exit_at_eof() -> None:
    """Portable backstop for PR_SET_PDEATHSIG: rank 0 holds our stdin open, so EOF means it is gone."""
    while os.read(0, 4096):  # the raw fd: a thread blocked in sys.stdin would hold its lock at interpreter exit
        pass
    os._exit(1)


if __name__ == "__main__":
    # Run the importable module's copy, so its classes are lrsearch.distributed.follower's and not __main__'s.
    from lrsearch.distributed.follower import _local_follower as _main

    code = _main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip torch's slow interpreter teardown: there is nothing left to clean up
