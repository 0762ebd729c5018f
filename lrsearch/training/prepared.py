"""Everything a process loads once and reuses for every trial: the task, its data on the device, or the user's
training function; and the checks that tie a study to the ranks that will train it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrsearch.errors import SpecError, UsageError
from lrsearch.training.devices import check_batch_size, resolve_device, resolve_nproc

if TYPE_CHECKING:
    import torch

    from lrsearch.config.spec import StudySpec
    from lrsearch.training.data import TaskData
    from lrsearch.training.tasks import Task


@dataclass
class Prepared:
    """Everything a process loads once and reuses for every trial."""

    spec: StudySpec
    task: Task | None
    data: TaskData | None
    """Tensors on the device, or a stream (:mod:`lrsearch.training.streaming`)."""
    device: str
    function: Callable[..., Any] | None = None
    """Function mode (``task.function``): the user's ``train(ctx)``; ``task`` and ``data`` are then None."""

    @property
    def torch_device(self) -> torch.device:
        """The device trials train on, with its index (``cuda`` becomes this process's current GPU)."""
        import torch

        device = torch.device(self.device)
        if device.type == "cuda" and device.index is None:
            return torch.device("cuda", torch.cuda.current_device())
        return device


def prepare(spec: StudySpec) -> Prepared:
    """Load the task and its data onto the device once; check the objective metric and batch size against it.

    Function mode imports ``task.function`` instead; its objective metric is checked at its first report.
    """
    from lrsearch.training.precision import check_precision
    from lrsearch.training.streaming import load_data
    from lrsearch.training.tasks import load_task

    device = resolve_device(spec.train.device)
    check_precision(spec.train.precision, device)
    if not isinstance(spec.task, str) and spec.task.function is not None:
        from lrsearch.training.function_mode import load_function

        return Prepared(spec, None, None, device, load_function(spec))
    task = load_task(spec)
    problems = []
    if spec.objective.metric not in task.metric_names():
        problems.append(
            f"objective.metric: {spec.objective.metric!r} is not reported by this task "
            f"(allowed: {', '.join(task.metric_names())})"
        )
    data = load_data(task, spec.train.loader, device, task_label(spec), spec.train.batch_size)
    if spec.train.batch_size > data.n_train:
        problems.append(
            f"train.batch_size: {spec.train.batch_size} is larger than the training set ({data.n_train} samples)"
        )
    if problems:
        raise SpecError(spec.source or "<study>", problems)
    return Prepared(spec, task, data, device)


def task_label(spec: StudySpec) -> str:
    """The study's task as errors name it: the built-in's name or the entrypoint."""
    return repr(spec.task if isinstance(spec.task, str) else spec.task.entrypoint or spec.task.function)


def prepare_rank(spec: StudySpec, local_rank: int) -> Prepared:
    """:func:`prepare` for one of several ranks on a machine: on CUDA, bind GPU ``local_rank`` first.

    Raises:
        UsageError: the study names a single GPU (``cuda:N``), which several ranks cannot share.
    """
    device = resolve_device(spec.train.device)
    if device.startswith("cuda"):
        import torch
        if device != "cuda":
            raise UsageError(f"train.device {device!r}: with several ranks each uses cuda:LOCAL_RANK; set "
                             "train.device to 'cuda' or 'auto'")
        torch.cuda.set_device(local_rank)
    return prepare(spec)


def ranks_per_trial(spec: StudySpec, device: str, launch: dict[str, Any] | None) -> int:
    """How many ranks train each trial: torchrun's world size under torchrun (``train.nproc_per_trial`` is then
    ignored), else ``train.nproc_per_trial``; checked against the batch size and ``train.batch_trials``.

    Raises:
        UsageError: a batch the ranks cannot split, stacked trials over several ranks, or a bad nproc.
    """
    nproc = launch["world_size"] if launch else resolve_nproc(spec.train.nproc_per_trial, device)
    check_batch_size(spec.train.batch_size, nproc)
    if spec.train.batch_trials > 1 and (launch is not None or nproc > 1):
        raise UsageError(f"train.batch_trials {spec.train.batch_trials} trains its trials stacked in one process: "
                         f"it cannot run with {nproc} ranks per trial (nproc_per_trial or torchrun)")
    return nproc
