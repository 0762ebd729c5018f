"""torchrun: ``torchrun --nnodes ... -m lrsearch tune STUDY.yaml`` runs one study over several nodes.

Rank 0 drives the study; every other rank follows the same trials (:func:`follow_torchrun`). Nothing is restarted
here: a failed rank ends the job, and torchrun's agent (``--max-restarts``) restarts it; the study resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from lrsearch.distributed import DdpCollective, _Channel, check_batch_size, follow, prepare_rank
from lrsearch.errors import UsageError

if TYPE_CHECKING:
    from lrsearch.spec import StudySpec
    from lrsearch.tuning import Prepared


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


@contextlib.contextmanager
def open_torchrun_collective(prepared: Prepared, env: dict[str, Any] | None = None) -> Iterator[DdpCollective]:
    """Every rank of a torchrun launch: join the process group and yield this rank's collective.

    Rank 0 runs the study with it (a normal end tells the others to stop), and the other ranks call :func:`follow`.
    Prepare with :func:`prepare_rank`, so each rank trains on its own GPU. Nothing is restarted: a failed rank ends
    the job.

    Raises:
        UsageError: not under torchrun, a batch the ranks cannot split, or ranks that loaded different studies.
    """
    import torch.distributed as dist
    env = env or torchrun_env()
    if env is None:
        raise UsageError("not launched by torchrun with several ranks (RANK, WORLD_SIZE, MASTER_ADDR are not set)")
    spec, rank, world = prepared.spec, env["rank"], env["world_size"]
    check_batch_size(spec.train.batch_size, world)
    collective = DdpCollective(rank, world, prepared.data.train_x.device, spec.train.rank_timeout)
    collective._join("nccl" if collective.device.type == "cuda" else "gloo")
    try:
        # All ranks must load the same study. With another file or flag, a rank would train other trials, silently.
        fingerprint = hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
        prints: list[Any] = [None] * world
        dist.all_gather_object(prints, fingerprint, group=collective._control)
        if differing := [r for r, p in enumerate(prints) if p != prints[0]]:
            raise UsageError(f"torchrun ranks {differing} loaded a different study than rank 0 "
                             "(give every node the same STUDY.yaml and flags)")
        # Messages go through a store of our own: the launcher's store is private to torch.
        store = dist.TCPStore(env["master_addr"], 0, is_master=True, timeout=collective.timeout,
                              wait_for_workers=False) if rank == 0 else None
        port = [store.port if store is not None else None]
        dist.broadcast_object_list(port, src=0, group=collective._control)
        if store is None:
            store = dist.TCPStore(env["master_addr"], port[0], is_master=False, timeout=collective.timeout)
        collective._channel = _Channel(store)
        yield collective
        collective.close()
    finally:
        collective._leave()


def follow_torchrun(spec: StudySpec, env: dict[str, Any]) -> int:
    """A non-zero torchrun rank's whole ``tune``: load the data, join, and follow rank 0 until it stops.

    It touches no storage and no observers. Returns the number of trials trained.
    """
    from lrsearch.threads import configure_threads
    configure_threads(spec.train.threads, workers=env["local_world_size"])  # ranks on one node share its cores
    prepared = prepare_rank(spec, env["local_rank"])
    with open_torchrun_collective(prepared, env) as collective:
        return follow(prepared, collective)
