"""A local DDP follower rank: ``python -m lrsearch.rank_process RANK WORLD_SIZE PORT PARENT_PID``, the study on
stdin. Started by :class:`lrsearch.distributed._Gang`; it joins rank 0's process group and trains each trial rank 0
announces, until told to stop or until its parent is gone."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import threading
from datetime import timedelta

from lrsearch.distributed import STARTUP_TIMEOUT, DdpCollective, _Channel, follow, prepare_rank


def _follower_main(argv: list[str]) -> int:
    """A local follower (``RANK WORLD_SIZE PORT PARENT_PID``, the study on stdin): join rank 0 and follow it."""
    rank, world_size, port, parent = map(int, argv)  # argv is written by _Gang.start
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; rank 0 stops us
    payload = json.loads(sys.stdin.buffer.readline())
    threading.Thread(target=_exit_at_eof, daemon=True, name="lrsearch-parent-watch").start()
    import torch.distributed as dist

    from lrsearch.spec import spec_from_dict
    from lrsearch.threads import configure_threads
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=STARTUP_TIMEOUT))
    try:
        spec = spec_from_dict(payload["spec"], payload["source"] or "<study>")
        spec.source = payload["source"]
        configure_threads(spec.train.threads, workers=world_size)
        prepared = prepare_rank(spec, rank)
    except Exception as exc:  # rank 0 raises it as the reason the gang could not start
        store.set(f"lrsearch/error/{rank}", f"{type(exc).__name__}: {exc}")
        return 1
    collective = DdpCollective(rank, world_size, prepared.data.train_x.device, spec.train.rank_timeout)
    store.set(f"lrsearch/ready/{rank}", "1")
    collective._join("nccl" if collective.device.type == "cuda" else "gloo", store)
    collective._channel = _Channel(store)
    try:
        follow(prepared, collective)
    except Exception as exc:  # rank 0 fails the trial and starts a new gang; one line here says why
        print(f"lrsearch DDP rank {rank}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}",
              file=sys.stderr)
        return 1
    finally:
        collective._leave()
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
    # Run the importable module's copy, so its classes are lrsearch.rank_process's and not __main__'s.
    from lrsearch.rank_process import _follower_main as _main

    code = _main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip torch's slow interpreter teardown: there is nothing left to clean up
