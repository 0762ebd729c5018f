"""One rank of a DDP process group: the :class:`~lrsearch.training.trial.Collective` a trial trains through, and
the channel on which rank 0 announces trials.

Between trials, followers wait on a TCPStore key, not in a collective: rank 0 can stay idle for a long time, and a
collective would time out. Inside a trial, every collective times out after ``train.rank_timeout``, so a rank that
crashes or hangs fails its trial within that time. This class is rank 0's collective under torchrun (nothing is
restarted there: a failed trial marks the group broken) and every follower's; a local gang's rank 0 is
:class:`lrsearch.distributed.gang.GangCollective`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from lrsearch.errors import TrialRuntimeError

if TYPE_CHECKING:
    import torch

    from lrsearch.training.trial import TrialSettings

logger = logging.getLogger(__name__)


class Channel:
    """Numbered JSON messages from rank 0 to every other rank, kept in a TCPStore: no timeout while idle."""

    def __init__(self, store: Any) -> None:
        self.store, self.count = store, 0

    def post(self, message: dict[str, Any]) -> None:
        self.count += 1
        self.store.set(f"lrsearch/message/{self.count}", json.dumps(message))

    def receive(self) -> dict[str, Any]:
        self.count += 1
        key, delay = f"lrsearch/message/{self.count}", 0.001
        # check() rather than wait(): each wait() that times out logs a c10d warning while a follower idles. If
        # rank 0 is gone (torchrun), check() raises DistNetworkError and this rank exits.
        while not self.store.check([key]):
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        return json.loads(self.store.get(key))


class DdpCollective:
    """The :class:`~lrsearch.training.trial.Collective` of one rank in a DDP process group.

    Rank 0 announces each trial (:meth:`begin_trial`), and the others get it from :meth:`receive`. Flags and
    barriers go through gloo, so they also work when training uses NCCL. Join with :meth:`join` (and
    :meth:`open_channel`) or :meth:`connect`, and leave with :meth:`leave`.
    """

    def __init__(self, rank: int, world_size: int, device: torch.device, rank_timeout: float) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device
        self.timeout = timedelta(seconds=rank_timeout)
        self.control: Any = None
        """The gloo group for flags and barriers; None is the default group (then gloo too)."""
        self.channel: Channel | None = None
        self._broken: str | None = None

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"

    @property
    def broken(self) -> bool:
        """True once a trial failed: no more trials can run in this group (under torchrun nothing restarts it)."""
        return self._broken is not None

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist
        total = values.clone()  # the caller's tensor keeps this rank's own value
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def any(self, flag: bool) -> bool:
        return self._flag(flag, reduce=True)

    def decide(self, flag: bool) -> bool:
        return self._flag(flag, reduce=False)

    def _flag(self, flag: bool, reduce: bool) -> bool:
        import torch
        import torch.distributed as dist
        value = torch.tensor([int(flag)], dtype=torch.int32)  # on the CPU: the control group is gloo
        if reduce:
            dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.control)
        else:
            dist.broadcast(value, src=0, group=self.control)
        return bool(value.item())

    def begin_trial(self, config: dict[str, Any], settings: TrialSettings) -> None:
        """Rank 0: announce the trial to every rank.

        Raises:
            TrialRuntimeError: a trial failed earlier in this group, which nothing here can restart.
        """
        if self._broken:
            raise TrialRuntimeError(f"{self._broken}; under torchrun lrsearch cannot restart ranks, so the job "
                                    "ends here (torchrun --max-restarts restarts it and the study resumes)")
        self.post({"kind": "trial", "config": config, "settings": asdict(settings)})

    def receive(self) -> tuple[dict[str, Any], TrialSettings] | None:
        """Non-zero ranks: wait for rank 0's next trial. Returns None when rank 0 says stop."""
        import torch.distributed as dist

        from lrsearch.training.trial import TrialSettings
        if self.channel is None:
            raise TrialRuntimeError(f"rank {self.rank} is not connected to rank 0")
        message = self.channel.receive()
        if message["kind"] == "stop":
            dist.barrier(group=self.control)  # tells rank 0 the stop was read, so it may close the store
            return None
        return message["config"], TrialSettings(**message["settings"])

    def recover(self) -> None:
        """Rank 0, after a failed trial: the group is unusable; the next :meth:`begin_trial` says so."""
        self._broken = "a trial failed on a DDP rank"

    def close(self) -> None:
        """Rank 0: stop the other ranks and leave the group. Safe to call more than once."""
        if self.rank == 0 and self.channel is not None and not self._broken:
            self.stop_others()
        self.leave()

    def post(self, message: dict[str, Any]) -> None:
        """Rank 0: send ``message`` to every other rank."""
        if self.channel is None:
            raise TrialRuntimeError("the DDP ranks are not connected")
        self.channel.post(message)

    def stop_others(self) -> None:
        """Rank 0: tell every other rank to stop; returns once every rank has read it."""
        import torch.distributed as dist
        self.post({"kind": "stop"})
        dist.barrier(group=self.control)

    def join(self, store: Any = None) -> None:
        """Initialise the process group, over ``store`` (a local gang) or the torchrun environment (``env://``)."""
        import torch.distributed as dist
        options: dict[str, Any] = {"rank": self.rank, "world_size": self.world_size, "timeout": self.timeout}
        if self.backend == "nccl":
            options["device_id"] = self.device
        if store is None:
            options["init_method"] = "env://"
        else:
            options["store"] = dist.PrefixStore("pg", store)  # the group's keys apart from our messages
        dist.init_process_group(self.backend, **options)
        self.control = dist.new_group(backend="gloo", timeout=self.timeout) if self.backend == "nccl" else None

    def open_channel(self, store: Any) -> None:
        """Rank 0's messages go through ``store``."""
        self.channel = Channel(store)

    def connect(self, store: Any) -> None:
        """Join the process group over ``store`` and take rank 0's messages from it too (a local gang)."""
        self.join(store)
        self.open_channel(store)

    def leave(self) -> None:
        """Leave the process group, if in one. Safe to call more than once."""
        import torch.distributed as dist
        self.channel = self.control = None
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception as exc:  # a group broken by a dead rank may not tear down cleanly; it is dropped
                logger.debug("destroy_process_group: %s", exc)
