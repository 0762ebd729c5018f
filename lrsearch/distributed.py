"""DistributedDataParallel trials: a persistent gang of ranks that trains trial after trial.

* **Local gang** (``train.nproc_per_trial: N``): the ``tune`` process is rank 0, the only rank that talks to Optuna
  and MLflow. :func:`open_gang` starts N-1 followers (``python -m lrsearch.rank_process``) once per ``tune``. Each
  loads the data and joins the process group once, then trains each trial that rank 0 announces. The backend is
  gloo on CPU, or NCCL on CUDA (one GPU per rank) with a gloo group for the control collectives.
* **torchrun** (``torchrun --nnodes ... -m lrsearch tune STUDY.yaml``): every rank opens
  :func:`lrsearch.torchrun.open_torchrun_collective`. Rank 0 runs the study and the others :func:`follow` it.

Between trials, followers wait on a TCPStore key, not in a collective: rank 0 can stay idle for a long time, and a
collective would time out. Inside a trial, every collective times out after ``train.rank_timeout``. So a rank that
crashes or hangs fails its trial within that time, and rank 0 restarts the gang. Under torchrun nothing is
restarted: a failed rank ends the job, and torchrun's agent (``--max-restarts``) restarts it.
``LRSEARCH_RANK_LOG=FILE`` makes the non-zero ranks append a JSON line there for each trial they train.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrsearch.errors import TrialRuntimeError, UsageError

if TYPE_CHECKING:
    import torch

    from lrsearch.spec import StudySpec
    from lrsearch.trial_runner import Collective, TrialOutcome, TrialSettings
    from lrsearch.tuning import Prepared

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT = 300.0
"""Seconds a follower may take to import torch and load the data. ``rank_timeout`` covers only work in a trial."""
STOP_GRACE = 5.0
"""Seconds followers get to exit after the stop message before they are terminated."""
RANK_LOG_ENV = "LRSEARCH_RANK_LOG"
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def resolve_nproc(value: int | str, device: str) -> int:
    """Ranks per trial from ``train.nproc_per_trial`` (an int, its string, or ``auto``: the number of visible GPUs
    on CUDA, 1 on CPU) and ``train.device``.

    Raises:
        UsageError: not a positive integer or ``auto``, more ranks than GPUs, or one GPU (``cuda:N``) for several.
    """
    from lrsearch.tuning import resolve_device

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


def prepare_rank(spec: StudySpec, local_rank: int) -> Prepared:
    """:func:`lrsearch.tuning.prepare` for one of several ranks on a machine: on CUDA, bind GPU ``local_rank`` first.

    Raises:
        UsageError: the study names a single GPU (``cuda:N``), which several ranks cannot share.
    """
    from lrsearch.tuning import prepare, resolve_device

    device = resolve_device(spec.train.device)
    if device.startswith("cuda"):
        import torch
        if device != "cuda":
            raise UsageError(f"train.device {device!r}: with several ranks each uses cuda:LOCAL_RANK; set "
                             "train.device to 'cuda' or 'auto'")
        torch.cuda.set_device(local_rank)
    return prepare(spec)


class DdpCollective:
    """The :class:`~lrsearch.trial_runner.Collective` of one rank in a DDP process group.

    Rank 0 announces each trial (:meth:`begin_trial`), and the others get it from :meth:`receive`. Flags and
    barriers go through gloo, so they also work when training uses NCCL.
    """

    def __init__(self, rank: int, world_size: int, device: torch.device, rank_timeout: float,
                 gang: _Gang | None = None) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device
        self.timeout = timedelta(seconds=rank_timeout)
        self._gang = gang
        self._control: Any = None  # the gloo group for flags; None is the default group (then gloo too)
        self._channel: _Channel | None = None
        self._broken: str | None = None

    @property
    def follower_pids(self) -> list[int]:
        """Process ids of rank 0's local followers (empty under torchrun)."""
        return [process.pid for process in self._gang.followers] if self._gang else []

    @property
    def broken(self) -> bool:
        """Under torchrun, True once a trial failed: no more trials can run in this job."""
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
            dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self._control)
        else:
            dist.broadcast(value, src=0, group=self._control)
        return bool(value.item())

    def begin_trial(self, config: dict[str, Any], settings: TrialSettings) -> None:
        """Rank 0: restart a dead or failed gang if needed, then announce the trial to every rank.

        Raises:
            TrialRuntimeError: the gang cannot start, or (under torchrun) a rank failed earlier.
        """
        if self._gang is not None:
            self._gang.ensure_running()
        elif self._broken:
            raise TrialRuntimeError(f"{self._broken}; under torchrun lrsearch cannot restart ranks, so the job "
                                    "ends here (torchrun --max-restarts restarts it and the study resumes)")
        self._post({"kind": "trial", "config": config, "settings": asdict(settings)})

    def receive(self) -> tuple[dict[str, Any], TrialSettings] | None:
        """Non-zero ranks: wait for rank 0's next trial. Returns None when rank 0 says stop."""
        import torch.distributed as dist

        from lrsearch.trial_runner import TrialSettings
        if self._channel is None:
            raise TrialRuntimeError(f"rank {self.rank} is not connected to rank 0")
        message = self._channel.receive()
        if message["kind"] == "stop":
            dist.barrier(group=self._control)  # tells rank 0 the stop was read, so it may close the store
            return None
        return message["config"], TrialSettings(**message["settings"])

    def recover(self) -> None:
        """Rank 0, after a failed trial: restart the local gang, or (torchrun) mark the group broken.

        Never raises, so the trial keeps its own error. If the restart fails, the next :meth:`begin_trial` retries.
        """
        if self._gang is None:
            self._broken = "a trial failed on a DDP rank"
            return
        for rank, process in enumerate(self._gang.followers, start=1):
            if process.poll() is not None:
                logger.warning("rank %d (pid %d) %s", rank, process.pid, _describe_exit(process.returncode))
        logger.warning("a trial failed; restarting the gang of %d ranks", self.world_size)
        try:
            self._gang.restart()
        except Exception as exc:  # reported again, as the trial's error, by the next begin_trial
            logger.error("could not restart the gang (the next trial tries again): %s", exc)

    def close(self) -> None:
        """Rank 0: stop the other ranks. Safe to call more than once."""
        if self._gang is not None:
            self._gang.close(graceful=True)
        elif self.rank == 0 and self._channel is not None and not self._broken:
            self._stop_others()
            self._leave()

    def _post(self, message: dict[str, Any]) -> None:
        if self._channel is None:
            raise TrialRuntimeError("the DDP ranks are not connected")
        self._channel.post(message)

    def _stop_others(self) -> None:
        import torch.distributed as dist
        self._post({"kind": "stop"})
        dist.barrier(group=self._control)  # returns once every rank has read the stop

    def _join(self, backend: str, store: Any = None) -> None:
        """Initialise the process group, over ``store`` (local gang) or the torchrun environment (``env://``)."""
        import torch.distributed as dist
        options: dict[str, Any] = {"rank": self.rank, "world_size": self.world_size, "timeout": self.timeout}
        if backend == "nccl":
            options["device_id"] = self.device
        if store is None:
            options["init_method"] = "env://"
        else:
            options["store"] = dist.PrefixStore("pg", store)  # the group's keys apart from our messages
        dist.init_process_group(backend, **options)
        self._control = dist.new_group(backend="gloo", timeout=self.timeout) if backend == "nccl" else None

    def _leave(self) -> None:
        import torch.distributed as dist
        self._channel = self._control = None
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception as exc:  # a group broken by a dead rank may not tear down cleanly; it is dropped
                logger.debug("destroy_process_group: %s", exc)


class _Channel:
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


class _Gang:
    """Rank 0's local followers and their process group: started once, started again after a failure."""

    def __init__(self, prepared: Prepared, nproc: int) -> None:
        import torch
        device = torch.device(prepared.data.train_x.device)
        if device.type == "cuda" and device.index not in (None, 0):
            raise UsageError(f"rank 0 trains on {device}; a gang of {nproc} ranks uses cuda:0..cuda:{nproc - 1}")
        self.prepared = prepared
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        self.collective = DdpCollective(0, nproc, device, prepared.spec.train.rank_timeout, self)
        self.followers: list[subprocess.Popen[bytes]] = []
        self.closed = False

    def start(self) -> None:
        import torch.distributed as dist
        if self.backend == "nccl":
            # By default a timed-out NCCL op tears down the whole process, which here is the tune process. With 2,
            # NCCL only aborts the communicator: the trial fails and recover() restarts the gang.
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
        spec, nproc = self.prepared.spec, self.collective.world_size
        store = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=self.collective.timeout,
                              wait_for_workers=False)  # port 0: the OS picks a free port, so no race for one
        payload = (json.dumps({"spec": spec.model_dump(mode="json"), "source": spec.source}) + "\n").encode()
        # Followers must import what this process imports: this lrsearch (even an uninstalled checkout), and task
        # modules found through sys.path entries added at run time (the Python API, tests).
        path = os.pathsep.join(dict.fromkeys(p for p in [_PACKAGE_ROOT, *sys.path] if p and os.path.isdir(p)))
        for rank in range(1, nproc):
            command = [sys.executable, "-m", "lrsearch.rank_process", *map(str, (rank, nproc, store.port, os.getpid()))]
            process = subprocess.Popen(command, stdin=subprocess.PIPE, env={**os.environ, "PYTHONPATH": path})
            self.followers.append(process)
            process.stdin.write(payload)  # type: ignore[union-attr]  # stdin stays open: EOF means we are gone
            process.stdin.flush()  # type: ignore[union-attr]
        self._await_ready(store)
        self.collective._join(self.backend, store)
        self.collective._channel = _Channel(store)

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
                                            f"{_describe_exit(process.returncode)} while starting")
            if pending and time.monotonic() > deadline:
                raise TrialRuntimeError(f"DDP ranks {sorted(pending)} were not ready after {STARTUP_TIMEOUT:.0f} s")
            time.sleep(0.05)

    def healthy(self) -> bool:
        return self.collective._channel is not None and all(p.poll() is None for p in self.followers)

    def ensure_running(self) -> None:
        if self.closed:
            raise TrialRuntimeError("the DDP gang is closed")
        if not self.healthy():
            self.restart()

    def restart(self) -> None:
        self._teardown(graceful=False)
        self.start()

    def close(self, graceful: bool) -> None:
        if not self.closed:
            self.closed = True
            self._teardown(graceful)

    def _teardown(self, graceful: bool) -> None:
        if graceful and self.healthy():
            try:
                self.collective._stop_others()
                deadline = time.monotonic() + STOP_GRACE
                for process in self.followers:
                    process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except Exception as exc:  # a rank that dies or lingers at the very end is terminated below
                logger.warning("DDP ranks did not stop cleanly: %s", exc)
        _terminate(self.followers, grace=1.0)
        self.followers = []
        self.collective._leave()


def _terminate(processes: list[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM each live process, SIGKILL any still alive after ``grace`` seconds, and reap them all."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()  # a stopped (SIGSTOP) or stuck process does not act on SIGTERM
            process.wait()
        with contextlib.suppress(OSError):
            process.stdin.close()  # type: ignore[union-attr]


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return "is running" if code is None else f"exited with code {code}"


@contextlib.contextmanager
def open_gang(prepared: Prepared, nproc: int) -> Iterator[Collective]:
    """Start ``nproc - 1`` local followers for the whole study, and yield rank 0's collective.

    With ``nproc == 1`` it yields :data:`~lrsearch.trial_runner.SINGLE_PROCESS` and starts nothing. Meanwhile this
    process uses ``train.threads`` torch threads, or its share of the cores. A normal end tells the followers to
    stop. Any exception, KeyboardInterrupt included, terminates them. A follower whose parent dies gets SIGKILL from
    the kernel (PR_SET_PDEATHSIG) or exits when its stdin closes.

    Raises:
        UsageError: ``train.batch_size`` is not divisible by ``nproc``.
        TrialRuntimeError: the followers cannot be started.

    Example:
        >>> with open_gang(prepared, 2) as collective:
        ...     run_study(study, prepared, observers, collective, world_size=2)
    """
    from lrsearch.trial_runner import SINGLE_PROCESS
    if nproc == 1:
        yield SINGLE_PROCESS
        return
    check_batch_size(prepared.spec.train.batch_size, nproc)
    import torch

    from lrsearch.threads import configure_threads
    gang, threads = _Gang(prepared, nproc), torch.get_num_threads()
    configure_threads(prepared.spec.train.threads, workers=nproc)  # ranks on one machine share its cores
    try:
        gang.start()
        yield gang.collective
    except BaseException:
        gang.close(graceful=False)
        raise
    else:
        gang.close(graceful=True)
    finally:
        torch.set_num_threads(threads)


def follow(prepared: Prepared, collective: DdpCollective) -> int:
    """Non-zero ranks: train each trial rank 0 announces until it says stop; return how many were trained.

    A trial's exception (a timed-out collective, a dead peer) propagates: the group is unusable after it, so exit.
    """
    from lrsearch.trial_runner import train_trial
    trained = 0
    while (message := collective.receive()) is not None:
        outcome = train_trial(prepared.task, prepared.data, *message, collective=collective)
        trained += 1
        _log_trial(collective.rank, trained, outcome)
    return trained


def _log_trial(rank: int, index: int, outcome: TrialOutcome) -> None:
    if path := os.environ.get(RANK_LOG_ENV):
        line = json.dumps({"rank": rank, "pid": os.getpid(), "trial": index, "epochs": len(outcome.history),
                           "stopped": outcome.stopped, "stopped_epoch": outcome.stopped_epoch,
                           "val_loss": outcome.final.get("val_loss")})
        with open(path, "a") as log:  # a single short append per line, so the lines of several ranks never mix
            log.write(line + "\n")
