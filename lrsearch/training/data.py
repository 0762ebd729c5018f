"""A task's data as a trial reads it: the batches of an epoch, the validation batches, and the global batches every
rank draws its share from.

Two kinds implement :class:`TaskData`: :class:`TrainData` holds the datasets as tensors on the training device
(the fast path: a batch is one indexing op) and :class:`~lrsearch.training.streaming.StreamedData` reads them
through a ``DataLoader`` every epoch. Both draw the same global batches (:func:`global_batches`), so a trial sees
the same samples in the same order on either path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from lrsearch.training.tasks import Task


class TaskData(Protocol):
    """What a trial reads its data through."""

    streamed: bool
    """False for tensors on the device, True for a dataset read through a loader every epoch."""

    @property
    def n_train(self) -> int: ...

    @property
    def n_val(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def train_batches(self, batch_size: int, seed: int, epoch: int, rank: int,
                      world_size: int) -> Iterator[tuple[Tensor, Tensor, float]]:
        """This rank's share of each global batch of an epoch, on the device, with its DDP weight (see
        :func:`global_batches`)."""
        ...

    def val_batches(self, batch_size: int, rank: int, world_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's shard of the validation set, in batches of at most ``batch_size``."""
        ...

    def cycled_batches(self, batch_size: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Endless training batches, all of ``batch_size`` (at most the set's size), reshuffled every pass."""
        ...


@dataclass
class TrainData:
    """A task's datasets as tensors on the training device: loaded once per process, batched by index."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    streamed = False

    @classmethod
    def from_task(cls, task: Task, device: torch.device | str) -> TrainData:
        """Read both datasets into tensors (a ``TensorDataset``'s own tensors, without a copy) on ``device``."""
        train_x, train_y = _materialise(task.train)
        val_x, val_y = _materialise(task.val)
        return cls(train_x.to(device), train_y.to(device), val_x.to(device), val_y.to(device))

    @property
    def n_train(self) -> int:
        return len(self.train_x)

    @property
    def n_val(self) -> int:
        return len(self.val_x)

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def train_batches(self, batch_size: int, seed: int, epoch: int, rank: int,
                      world_size: int) -> Iterator[tuple[Tensor, Tensor, float]]:
        for indices, weight in global_batches(self.n_train, batch_size, seed, epoch, rank, world_size, self.device):
            yield self.train_x[indices], self.train_y[indices], weight

    def val_batches(self, batch_size: int, rank: int, world_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        import torch

        shard = torch.arange(self.n_val, device=self.device).tensor_split(world_size)[rank]
        for indices in shard.split(batch_size):
            yield self.val_x[indices], self.val_y[indices]

    def cycled_batches(self, batch_size: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        import torch

        generator = torch.Generator().manual_seed(seed)
        size = min(batch_size, self.n_train)
        while True:
            order = torch.randperm(self.n_train, generator=generator).to(self.device)
            for first in range(0, self.n_train - size + 1, size):
                indices = order[first : first + size]
                yield self.train_x[indices], self.train_y[indices]


def _materialise(dataset: Any) -> tuple[Tensor, Tensor]:
    from torch.utils.data import TensorDataset, default_collate

    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors[0], dataset.tensors[1]
    inputs, targets = default_collate([dataset[i] for i in range(len(dataset))])
    return inputs, targets


def global_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int, world_size: int,
                   device: torch.device | str) -> Iterator[tuple[Tensor, float]]:
    """This rank's slice of each global batch of an epoch, and the weight that makes the DDP average exact.

    The shuffle depends only on (seed, epoch), so every rank and every world size sees the same global batches.
    """
    import torch

    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    order = torch.randperm(n, generator=generator).to(device)
    for start in range(0, n, batch_size):
        share = rank_share(order[start : start + batch_size], rank, world_size)
        if share is not None:
            yield share


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's shuffle (and of a stream's reads in it): a function of (seed, epoch) only."""
    return seed * 1_000_003 + epoch


def rank_share(batch: Tensor, rank: int, world_size: int) -> tuple[Tensor, float] | None:
    """This rank's slice of a global batch and its weight ``len(slice) * world_size / len(batch)``: scaling each
    rank's mean loss by it makes DDP's gradient average the gradient of the global batch's mean loss. None for a
    global batch smaller than the world (some rank would get nothing)."""
    if world_size == 1:
        return batch, 1.0
    if len(batch) < world_size:
        return None
    mine = batch.tensor_split(world_size)[rank]
    return mine, len(mine) * world_size / len(batch)
