"""A task's datasets as tensors on the training device, and the global batches every rank draws from them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from lrsearch.training.tasks import Task


@dataclass
class TrainData:
    """A task's datasets as tensors on the training device: loaded once per process, batched by index."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor

    @classmethod
    def from_task(cls, task: Task, device: torch.device | str) -> TrainData:
        train_x, train_y = _materialise(task.train)
        val_x, val_y = _materialise(task.val)
        return cls(train_x.to(device), train_y.to(device), val_x.to(device), val_y.to(device))


def _materialise(dataset: Any) -> tuple[Tensor, Tensor]:
    from torch.utils.data import TensorDataset, default_collate

    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors[0], dataset.tensors[1]
    inputs, targets = default_collate([dataset[i] for i in range(len(dataset))])
    return inputs, targets


def global_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int, world_size: int,
                   device: torch.device) -> Iterator[tuple[Tensor, float]]:
    """This rank's slice of each global batch of an epoch, and the weight that makes the DDP average exact.

    The shuffle depends only on (seed, epoch), so every rank and every world size sees the same global batches.
    """
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator).to(device)
    for start in range(0, n, batch_size):
        global_batch = order[start : start + batch_size]
        if world_size == 1:
            yield global_batch, 1.0
        elif len(global_batch) >= world_size:
            mine = global_batch.tensor_split(world_size)[rank]
            yield mine, len(mine) * world_size / len(global_batch)
