"""Streamed task data: datasets read through torch's ``DataLoader`` every epoch, for data that does not fit in
memory or is augmented anew each time it is read.

Which path a task takes (:func:`load_data`): a ``TensorDataset`` stays tensors on the device (:class:`TrainData`);
every other dataset is streamed (:class:`StreamedData`), unless the Task says ``in_memory``.

Reproducibility. A map-style dataset's item ``i`` is read in epoch ``e`` with torch's, Python's and NumPy's global
random generators seeded from ``(seed, e, i)`` (:func:`item_seed`): its augmentation is new every epoch, identical
for the same (seed, epoch), and the same whichever loader worker, rank or batch reads it, so DDP reproduces one
process. The batches are the tensor path's global batches (:func:`~lrsearch.training.data.global_batches`), each
rank reading only its share. An ``IterableDataset`` is read whole by every rank, which keeps its share of each
global batch; its loader workers are seeded from (seed, epoch) and started anew each epoch. Reads in this process
(``num_workers: 0``) run on random states of their own, so they never shift the numbers training draws.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrsearch.errors import TaskError
from lrsearch.training.data import TrainData, epoch_seed, global_batches, rank_share

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from lrsearch.config.spec import Loader
    from lrsearch.training.data import TaskData
    from lrsearch.training.tasks import Task

MAX_AUTO_WORKERS = 8
"""``num_workers: auto`` gives each training process one loader worker per spare core (its share of the cores
less one for training), at least 1 and at most this many."""
GPU_DATA_SHARE = 0.25
"""A ``TensorDataset`` larger than this share of the GPU's memory is streamed from host memory instead: the model,
its gradients and the optimizer's state need the rest."""
VAL_EPOCH = -1
"""The epoch validation items are read as: the same reads (and any augmentation) for every epoch and trial."""
_MASK64 = (1 << 64) - 1


def load_data(task: Task, loader: Loader, device: str, label: str, val_batch_size: int) -> TaskData:
    """The task's data on the path that fits it, its items checked first.

    Args:
        task: The task whose ``train`` and ``val`` to load.
        loader: The study's ``train.loader`` options, for a streamed dataset.
        device: The training device.
        label: The task's name in error messages.
        val_batch_size: The largest validation batch a stream reads (the training batch size).

    Raises:
        TaskError: an item is not an ``(input, target)`` pair of tensors or numbers, a dataset is empty or has no
            length, or ``in_memory=True`` was asked of an ``IterableDataset``.
    """
    for dataset, split in ((task.train, "train"), (task.val, "val")):
        check_first_item(dataset, split, label)
    if data_path(task, device) == "tensors":
        return TrainData.from_task(task, device)
    return StreamedData(task, loader, device, label, val_batch_size)


def data_path(task: Task, device: str) -> str:
    """``tensors`` (the datasets read once onto the device) or ``streamed`` (read through a loader every epoch)."""
    from torch.utils.data import IterableDataset, TensorDataset

    iterable = [isinstance(d, IterableDataset) for d in (task.train, task.val)]
    if task.in_memory and any(iterable):
        raise TaskError("Task(in_memory=True): an IterableDataset cannot be read into memory by index; stream it")
    if task.loader is not None or task.in_memory is False or any(iterable):
        return "streamed"
    if task.in_memory:
        return "tensors"
    tensors = [d.tensors for d in (task.train, task.val) if isinstance(d, TensorDataset)]
    if len(tensors) < 2:
        return "streamed"  # a Dataset's __getitem__ may read from disk or augment: it must run every epoch
    return "streamed" if _exceeds_gpu_share(sum(t.nbytes for pair in tensors for t in pair), device) else "tensors"


def _exceeds_gpu_share(nbytes: int, device: str) -> bool:
    import torch

    if not device.startswith("cuda"):
        return False  # the tensors already live in this memory: using them in place costs nothing
    return nbytes > GPU_DATA_SHARE * torch.cuda.get_device_properties(torch.device(device)).total_memory


def check_first_item(dataset: Any, split: str, label: str) -> None:
    """Raise :class:`TaskError` unless the dataset's first item is an ``(input, target)`` pair that collates into
    two tensors (read on random states of its own)."""
    from torch.utils.data import IterableDataset, default_collate

    with DataRandomness(0):
        try:
            item = next(iter(dataset), None) if isinstance(dataset, IterableDataset) else \
                (dataset[0] if dataset_length(dataset, split, label) else None)
        except TaskError:
            raise
        except Exception as exc:  # the user's dataset failed reading: say which, in one line
            raise TaskError(f"task {label}: reading {split} item 0 failed: {type(exc).__name__}: {exc}") from exc
    if item is None:
        raise TaskError(f"task {label}: the {split} dataset is empty")
    problem = f"{type(item).__name__} of {len(item)}" if isinstance(item, (tuple, list)) else type(item).__name__
    if isinstance(item, (tuple, list)) and len(item) == 2:
        try:
            _pair(default_collate([item]), split, label)
            return
        except (TaskError, TypeError, RuntimeError) as exc:
            problem = f"a pair that does not collate into tensors ({exc})"
    raise TaskError(f"task {label}: {split} item 0 is a {problem}; items must be (input, target) pairs of tensors "
                    "or numbers")


def dataset_length(dataset: Any, split: str, label: str) -> int:
    """``len(dataset)``; an ``IterableDataset`` without one is counted in one pass (read on its own randomness)."""
    from torch.utils.data import IterableDataset

    try:
        return len(dataset)
    except TypeError:
        if not isinstance(dataset, IterableDataset):
            raise TaskError(f"task {label}: the {split} dataset ({type(dataset).__name__}) has no len(); give a "
                            "map-style Dataset with __len__ or an IterableDataset") from None
    with DataRandomness(0):
        return sum(1 for _ in dataset)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed item ``index`` is read with in ``epoch`` of a trial seeded ``seed`` (splitmix64 of the three)."""
    value = (epoch_seed(seed, epoch) * 0x9E3779B97F4A7C15 + index) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (value ^ (value >> 31)) >> 1  # 63 bits: torch's manual_seed takes a signed 64-bit value


def seed_global_randomness(value: int) -> None:
    """Seed torch's CPU generator, Python's ``random`` and NumPy's global generator: whichever an augmentation
    draws from. (``torch.manual_seed`` would also reseed every GPU, 100x slower and not a data worker's concern.)"""
    import numpy as np
    import torch

    torch.default_generator.manual_seed(value)
    random.seed(value)
    np.random.seed(value & 0xFFFFFFFF)


class DataRandomness:
    """A context in which data is read on random states of its own, started from ``seed`` and carried from one
    use to the next; on leaving, the states training draws from are back as they were."""

    def __init__(self, seed: int) -> None:
        saved = _capture()
        seed_global_randomness(seed)
        self.state = _capture()
        _restore(saved)
        self._saved: tuple[Any, ...] | None = None

    def __enter__(self) -> DataRandomness:
        self._saved = _capture()
        _restore(self.state)
        return self

    def __exit__(self, *exc: object) -> None:
        self.state = _capture()
        _restore(self._saved)


def _capture() -> tuple[Any, ...]:
    import numpy as np
    import torch

    return torch.get_rng_state(), random.getstate(), np.random.get_state()


def _restore(state: tuple[Any, ...] | None) -> None:
    import numpy as np
    import torch

    if state is not None:
        torch.set_rng_state(state[0])
        random.setstate(state[1])
        np.random.set_state(state[2])


class SeededItems:
    """A map-style dataset read by ``(seed, epoch, index)`` keys: item ``index`` under :func:`item_seed`."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> Any:
        seed, epoch, index = key
        seed_global_randomness(item_seed(seed, epoch, index))
        return self.dataset[index]


class EpochBatches:
    """A batch sampler: this rank's share of each global batch of an epoch as :class:`SeededItems` keys, with the
    DDP weight of each (set for an epoch by :meth:`set_epoch`, read by the loader in this process). The epoch's
    order is kept as tensors; a batch's keys are made as the loader asks for it."""

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int) -> None:
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.seed = self.epoch = 0
        self.batches: list[Tensor] = []
        self.weights: list[float] = []

    def set_epoch(self, seed: int, epoch: int) -> None:
        plan = list(global_batches(self.n, self.batch_size, seed, epoch, self.rank, self.world_size, "cpu"))
        self.seed, self.epoch = seed, epoch
        self.batches = [indices for indices, _ in plan]
        self.weights = [weight for _, weight in plan]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for indices in self.batches:
            yield [(self.seed, self.epoch, index) for index in indices.tolist()]

    def __len__(self) -> int:
        return len(self.batches)


@dataclass
class _Reader:
    """One dataset's loader in this process, built once and iterated every epoch."""

    loader: Any
    generator: torch.Generator
    in_process: bool
    """Whether the loader reads in this process (no workers)."""
    sharded: bool
    """Whether the loader gives only this rank's share (a map-style dataset's sampler does; a stream does not)."""
    plan: EpochBatches | None = None
    """lrsearch's batch sampler, when the loader uses it: it carries each batch's DDP weight."""


class StreamedData:
    """A task's datasets read through a loader every epoch (see the module's docstring for what is guaranteed)."""

    streamed = True

    def __init__(self, task: Task, options: Loader, device: str, label: str, val_batch_size: int) -> None:
        import torch
        from torch.utils.data import DataLoader

        self.train_set, self.val_set, self.options, self.label = task.train, task.val, options, label
        self.factory: Callable[..., Any] = task.loader or DataLoader
        self.val_batch_size = val_batch_size
        self.core_share = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        """Cores this process may use; :func:`~lrsearch.training.threads.configure_threads` sets its share."""
        self._device = torch.device(device)
        self._n_train = dataset_length(task.train, "train", label)
        self._n_val = dataset_length(task.val, "val", label)
        self._readers: dict[tuple[Any, ...], _Reader] = {}

    @property
    def n_train(self) -> int:
        return self._n_train

    @property
    def n_val(self) -> int:
        return self._n_val

    @property
    def device(self) -> torch.device:
        return self._device

    def train_batches(self, batch_size: int, seed: int, epoch: int, rank: int,
                      world_size: int) -> Iterator[tuple[Tensor, Tensor, float]]:
        reader = self._reader("train", batch_size, rank, world_size)
        if reader.plan is not None:
            reader.plan.set_epoch(seed, epoch)
        for owner in (getattr(reader.loader, "batch_sampler", None), getattr(reader.loader, "sampler", None),
                      self.train_set):
            if owner is not reader.plan and hasattr(owner, "set_epoch"):
                owner.set_epoch(epoch)  # DistributedSampler's and many streams' convention
        for step, batch in enumerate(self._read(reader, epoch_seed(seed, epoch))):
            x, y = _pair(batch, "train", self.label)
            if reader.sharded:  # the sampler gave this rank's share: lrsearch's knows its weight; one of the
                # user's own shards as DistributedSampler does, into equal shares
                yield self._to_device(x, reader), self._to_device(y, reader), \
                    reader.plan.weights[step] if reader.plan is not None else 1.0
                continue
            x_share, y_share = rank_share(x, rank, world_size), rank_share(y, rank, world_size)
            if x_share is not None and y_share is not None:
                yield self._to_device(x_share[0], reader), self._to_device(y_share[0], reader), x_share[1]

    def val_batches(self, batch_size: int, rank: int, world_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        reader = self._reader("val", min(batch_size, self.val_batch_size), rank, world_size)
        for batch in self._read(reader, epoch_seed(0, VAL_EPOCH)):
            x, y = _pair(batch, "val", self.label)
            if not reader.sharded:  # a stream: every rank read the whole batch and keeps its shard
                x, y = x.tensor_split(world_size)[rank], y.tensor_split(world_size)[rank]
            if len(x):
                yield self._to_device(x, reader), self._to_device(y, reader)

    def cycled_batches(self, batch_size: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        size = min(batch_size, self.n_train)
        for epoch in itertools.count():
            for x, y, _ in self.train_batches(batch_size, seed, epoch, 0, 1):
                if len(x) == size:
                    yield x, y

    def close(self) -> None:
        """Stop the loader workers (they also stop when this process ends)."""
        self._readers.clear()

    def _reader(self, split: str, batch_size: int, rank: int, world_size: int) -> _Reader:
        key = (split, batch_size, rank, world_size)
        if key not in self._readers:
            self._readers[key] = self._build(split, batch_size, rank, world_size)
        return self._readers[key]

    def _build(self, split: str, batch_size: int, rank: int, world_size: int) -> _Reader:
        import torch
        from torch.utils.data import IterableDataset

        dataset = self.train_set if split == "train" else self.val_set
        iterable = isinstance(dataset, IterableDataset)
        options = self.loader_options(iterable)
        options["generator"] = generator = torch.Generator()
        if iterable:
            loader = self.factory(dataset, batch_size=batch_size, **options)
            return _Reader(loader, generator, getattr(loader, "num_workers", options["num_workers"]) == 0, False)
        if split == "train":
            sampler: Any = EpochBatches(self.n_train, batch_size, rank, world_size)
        else:
            shard = torch.arange(self.n_val).tensor_split(world_size)[rank]
            sampler = [[(0, VAL_EPOCH, i) for i in part.tolist()] for part in shard.split(batch_size)]
        loader = self.factory(SeededItems(dataset), batch_sampler=sampler, **options)
        plan = sampler if split == "train" and getattr(loader, "batch_sampler", None) is sampler else None
        return _Reader(loader, generator, getattr(loader, "num_workers", options["num_workers"]) == 0, True, plan)

    def loader_options(self, iterable: bool) -> dict[str, Any]:
        """torch DataLoader options from ``train.loader``, ``auto`` resolved (see the README's table)."""
        options = self.options
        if options.num_workers != "auto":
            workers = int(options.num_workers)
        else:
            # A stream is split across workers only by the dataset itself (get_worker_info): read it here.
            workers = 0 if iterable else max(1, min(MAX_AUTO_WORKERS, self.core_share - 1))
        pin = self._device.type == "cuda" if options.pin_memory == "auto" else bool(options.pin_memory)
        # Persistent workers keep their processes between epochs and trials; a stream's workers must restart
        # every epoch to be reseeded from (seed, epoch).
        persistent = workers > 0 and (not iterable if options.persistent_workers == "auto"
                                      else bool(options.persistent_workers))
        found: dict[str, Any] = {"num_workers": workers, "pin_memory": pin, "persistent_workers": persistent}
        if workers:
            found["prefetch_factor"] = options.prefetch_factor
        return found

    def _read(self, reader: _Reader, seed: int) -> Iterator[Any]:
        reader.generator.manual_seed(seed)  # loader workers are seeded from it: the same (seed, epoch), the same
        if not reader.in_process:
            yield from reader.loader
            return
        randomness = DataRandomness(seed)
        with randomness:
            iterator = iter(reader.loader)
        while True:
            with randomness:
                batch = next(iterator, None)
            if batch is None:
                return
            yield batch

    def _to_device(self, tensor: Tensor, reader: _Reader) -> Tensor:
        # Pinned host memory copies to the GPU asynchronously, overlapping the copy with the training step.
        return tensor.to(self._device, non_blocking=bool(getattr(reader.loader, "pin_memory", False)))


def _pair(batch: Any, split: str, label: str) -> tuple[Tensor, Tensor]:
    import torch

    if isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, torch.Tensor) for t in batch):
        return batch[0], batch[1]
    kinds = ", ".join(type(part).__name__ for part in batch) if isinstance(batch, (tuple, list)) else \
        type(batch).__name__
    raise TaskError(f"task {label}: a {split} batch is ({kinds}); a loader must give (input, target) tensor pairs")
