"""torchrun: ``torchrun --nnodes ... -m lrsearch tune STUDY.yaml`` runs one study over several nodes.

Rank 0 drives the study; every other rank follows the same trials (:func:`follow_torchrun`). Nothing is restarted
here: a failed rank ends the job, and torchrun's agent (``--max-restarts``) restarts it; the study resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from lrsearch.distributed.collective import DdpCollective
from lrsearch.distributed.follower import follow, prepare_follower
from lrsearch.errors import UsageError
from lrsearch.training.devices import check_batch_size, torchrun_env

if TYPE_CHECKING:
    from lrsearch.config.spec import StudySpec
    from lrsearch.training.prepared import Prepared


@contextlib.contextmanager
def open_torchrun_collective(prepared: Prepared, env: dict[str, Any] | None = None) -> Iterator[DdpCollective]:
    """Every rank of a torchrun launch: join the process group and yield this rank's collective.

    Rank 0 runs the study with it (a normal end tells the others to stop), and the other ranks call
    :func:`~lrsearch.distributed.follower.follow`. Prepare with ``prepare_rank``, so each rank trains on its own
    GPU. Nothing is restarted: a failed rank ends the job.

    Raises:
        UsageError: not under torchrun, a batch the ranks cannot split, or ranks that loaded different studies.
    """
    import torch.distributed as dist
    env = env or torchrun_env()
    if env is None:
        raise UsageError("not launched by torchrun with several ranks (RANK, WORLD_SIZE, MASTER_ADDR are not set)")
    spec, rank, world = prepared.spec, env["rank"], env["world_size"]
    check_batch_size(spec.train.batch_size, world)
    collective = DdpCollective(rank, world, prepared.torch_device, spec.train.rank_timeout)
    collective.join()
    try:
        # All ranks must load the same study. With another file or flag, a rank would train other trials, silently.
        fingerprint = hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
        prints: list[Any] = [None] * world
        dist.all_gather_object(prints, fingerprint, group=collective.control)
        if differing := [r for r, p in enumerate(prints) if p != prints[0]]:
            raise UsageError(f"torchrun ranks {differing} loaded a different study than rank 0 "
                             "(give every node the same STUDY.yaml and flags)")
        # Messages go through a store of our own: the launcher's store is private to torch.
        store = dist.TCPStore(env["master_addr"], 0, is_master=True, timeout=collective.timeout,
                              wait_for_workers=False) if rank == 0 else None
        port = [store.port if store is not None else None]
        dist.broadcast_object_list(port, src=0, group=collective.control)
        if store is None:
            store = dist.TCPStore(env["master_addr"], port[0], is_master=False, timeout=collective.timeout)
        collective.open_channel(store)
        yield collective
        collective.close()
    finally:
        collective.leave()


def follow_torchrun(spec: StudySpec, env: dict[str, Any]) -> int:
    """A non-zero torchrun rank's whole ``tune``: load the data, join, and follow rank 0 until it stops.

    It touches no storage and no observers. Returns the number of trials trained.
    """
    prepared = prepare_follower(spec, env["local_rank"], env["local_world_size"])
    with open_torchrun_collective(prepared, env) as collective:
        return follow(prepared, collective)
