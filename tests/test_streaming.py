"""Streamed task data: augmentation re-applied per (seed, epoch), IterableDataset tasks, DDP on streams, the path
a task takes, bad items, and stacked trials and the LR range test reading a stream."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_study, write_study
from torch.utils.data import DataLoader, Dataset, TensorDataset

import lrsearch
from lrsearch.cli import cli
from lrsearch.config.spec import Loader, spec_from_dict
from lrsearch.distributed.gang import open_gang
from lrsearch.errors import TaskError
from lrsearch.study.loop import run_study
from lrsearch.study.storage import create_study, open_storage
from lrsearch.training.batched import train_trials_batched
from lrsearch.training.data import TrainData
from lrsearch.training.lr_finder import lr_find
from lrsearch.training.prepared import prepare
from lrsearch.training.runner import train_trial
from lrsearch.training.streaming import StreamedData, data_path
from lrsearch.training.trial import TrialSettings

State = optuna.trial.TrialState
ADAM = {"optimizer": "adam", "params": {"lr": 1e-2}, "schedule": {"name": "constant"}}
MOMENTUM = {"optimizer": "momentum", "params": {"lr": 0.05, "momentum": 0.9}, "schedule": {"name": "cosine"}}

TASKS = textwrap.dedent('''
    """Streamed tasks: 512 points of 16 features in 4 classes, read with noise added anew at every read."""
    import torch
    from torch.utils.data import Dataset, IterableDataset
    import lrsearch

    g = torch.Generator().manual_seed(0)
    X = torch.randn(640, 16, generator=g)
    Y = (X @ torch.randn(16, 4, generator=g)).argmax(1)

    class Noisy(Dataset):
        """Map-style, augmented: Gaussian noise drawn from torch's global generator at every read."""
        def __init__(self, x, y):
            self.x, self.y = x, y
        def __len__(self):
            return len(self.x)
        def __getitem__(self, i):
            return self.x[i] + 0.1 * torch.randn(16), self.y[i]

    class Stream(IterableDataset):
        """No len(): lrsearch counts it once."""
        def __init__(self, x, y):
            self.x, self.y = x, y
        def __iter__(self):
            for i in range(len(self.x)):
                yield self.x[i] + 0.1 * torch.randn(16), self.y[i]

    def model():
        return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))

    def make(kind="map", items="pairs"):
        data = Noisy if kind == "map" else Stream
        train, val = data(X[:512], Y[:512]), data(X[512:], Y[512:])
        if items == "single":
            train = torch.utils.data.TensorDataset(X[:512])
        return lrsearch.Task(model, train, val, torch.nn.functional.cross_entropy,
                             metrics={"accuracy": lambda o, t: (o.argmax(1) == t).float().mean().item()})
''')


@pytest.fixture
def tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The streamed tasks module, importable here and by DDP followers (through sys.path)."""
    (tmp_path / "tasks_here").mkdir()
    (tmp_path / "tasks_here" / "streamed.py").write_text(TASKS)
    monkeypatch.syspath_prepend(str(tmp_path / "tasks_here"))
    sys.modules.pop("streamed", None)
    import streamed

    return streamed


class Indexed(Dataset):
    """Item i is (noise drawn at this read, i): the target says which item a row is."""

    def __len__(self) -> int:
        return 96

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.rand(3), i


def _reads(data: StreamedData, seed: int, epoch: int) -> torch.Tensor:
    """Every item's augmented input of one epoch, in item order."""
    rows = [(y, x) for x, y, _ in data.train_batches(32, seed, epoch, 0, 1)]
    inputs, index = torch.cat([x for _, x in rows]), torch.cat([y for y, _ in rows])
    return inputs[index.argsort()]


def test_augmentation_is_new_every_epoch_and_the_same_for_the_same_seed_and_epoch() -> None:
    task = lrsearch.Task(lambda: torch.nn.Linear(3, 1), Indexed(), Indexed(), torch.nn.functional.mse_loss)
    in_process = StreamedData(task, Loader(num_workers=0), "cpu", "'indexed'", 32)
    workers = StreamedData(task, Loader(num_workers=2), "cpu", "'indexed'", 32)
    torch.manual_seed(123)
    epoch0 = _reads(in_process, seed=0, epoch=0)
    after_reading = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after_reading)  # reading in this process drew nothing training draws

    assert torch.equal(_reads(in_process, 0, 0), epoch0)  # the same (seed, epoch): the same augmentation
    assert torch.equal(_reads(workers, 0, 0), epoch0)  # whichever process reads an item
    assert not torch.isclose(_reads(in_process, 0, 1), epoch0).any()  # a new epoch: every item augmented anew
    assert not torch.isclose(_reads(workers, 1, 0), epoch0).any()  # another seed: another augmentation
    assert torch.equal(_reads(workers, 0, 1), _reads(in_process, 0, 1))
    workers.close()


def test_a_dataset_takes_the_path_its_type_allows(tasks: Any) -> None:
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    tensors = lrsearch.Task(tasks.model, TensorDataset(x, y), TensorDataset(x, y), torch.nn.functional.cross_entropy)
    assert data_path(tensors, "cpu") == "tensors"
    assert data_path(tasks.make("map"), "cpu") == "streamed"  # its __getitem__ augments: it must run every epoch
    assert data_path(tasks.make("stream"), "cpu") == "streamed"
    tensors.in_memory = False
    assert data_path(tensors, "cpu") == "streamed"
    in_memory = tasks.make("map")
    in_memory.in_memory = True
    assert data_path(in_memory, "cpu") == "tensors"
    stream = tasks.make("stream")
    stream.in_memory = True
    with pytest.raises(TaskError, match="an IterableDataset cannot be read into memory"):
        data_path(stream, "cpu")


def test_streamed_and_tensor_paths_draw_the_same_batches(tasks: Any) -> None:
    x, y = tasks.X[:512], tasks.Y[:512]
    tensors = lrsearch.Task(tasks.model, TensorDataset(x, y), TensorDataset(tasks.X[512:], tasks.Y[512:]),
                            torch.nn.functional.cross_entropy)
    collated: list[int] = []

    def loader(dataset: Any, **options: Any) -> DataLoader:  # a task's own loader: here, a counting collate
        return DataLoader(dataset, **options, collate_fn=lambda items: collated.append(1) or
                          torch.utils.data.default_collate(items))

    streamed = lrsearch.Task(tasks.model, tensors.train, tensors.val, tensors.loss, loader=loader)
    settings = TrialSettings(2, 64, 0)
    a = train_trial(tensors, TrainData.from_task(tensors, "cpu"), ADAM, settings)
    b = train_trial(streamed, StreamedData(streamed, Loader(num_workers=0), "cpu", "'t'", 64), ADAM, settings)
    assert [e.metrics["train_loss"] for e in a.history] == [e.metrics["train_loss"] for e in b.history]
    # Validation batches differ in size (4096 on the tensor path, the training batch on a stream): the sums differ
    # in the last bits only.
    assert [e.metrics["val_loss"] for e in a.history] == pytest.approx([e.metrics["val_loss"] for e in b.history],
                                                                       rel=1e-6)
    assert len(collated) == 2 * (8 + 2)  # the task's loader read every batch: 8 train and 2 val per epoch


def test_an_iterable_dataset_task_runs_a_study(tasks: Any, tmp_path: Path, storage: str) -> None:
    path = write_study(tmp_path, tiny_study(task={"entrypoint": "streamed:make", "args": {"kind": "stream"}},
                                            objective={"metric": "val_accuracy", "direction": "maximize"},
                                            budget={"n_trials": 2, "epochs": 3}, train={"threads": 1},
                                            search={"optimizers": ["adam"], "adam": {"lr": {"low": 3e-3,
                                                                                            "high": 3e-2}}}))
    study = lrsearch.tune(str(path), storage=storage)
    assert [t.state for t in study.trials] == [State.COMPLETE, State.COMPLETE]
    for trial in study.trials:
        assert trial.user_attrs["training"]["data"] == "streamed"
        assert trial.user_attrs["val_loss"] < 1.3  # 4 classes: chance is ln 4 = 1.39
    assert max(t.value for t in study.trials) > 0.5


def test_two_gloo_ranks_on_augmented_streamed_data_match_one_process(tasks: Any, storage: str) -> None:
    spec = spec_from_dict(tiny_study(task={"entrypoint": "streamed:make"}, budget={"n_trials": 1, "epochs": 2},
                                     train={"loader": {"num_workers": 0}}))
    prepared = prepare(spec)
    assert prepared.data is not None and prepared.data.streamed
    opened = open_storage(storage)
    study = create_study(spec, opened, "ddp-stream")
    with open_gang(prepared, 2) as collective:
        run_study(study, opened, prepared, [], collective)
    (trial,) = study.trials
    assert trial.state == State.COMPLETE and trial.user_attrs["training"]["world_size"] == 2
    single = train_trial(prepared.task, prepared.data, trial.user_attrs["config"], TrialSettings(2, 64, 0))
    assert [trial.intermediate_values[e] for e in (0, 1)] == pytest.approx(
        [e.metrics["val_loss"] for e in single.history], rel=1e-5)
    assert trial.user_attrs["train_loss"] == pytest.approx(single.final["train_loss"], rel=1e-5)


def test_items_of_the_wrong_form_are_one_line_naming_the_task(tasks: Any, tmp_path: Path) -> None:
    path = write_study(tmp_path, tiny_study(task={"entrypoint": "streamed:make", "args": {"items": "single"}}))
    result = CliRunner().invoke(cli, ["tune", str(path), "--no-mlflow", "--no-progress"])
    assert result.exit_code == 2
    assert result.stderr == ("error: task 'streamed:make': train item 0 is a tuple of 1; items must be "
                             "(input, target) pairs of tensors or numbers\n")


def test_stacked_trials_and_the_lr_range_test_read_a_stream(tasks: Any) -> None:
    spec = spec_from_dict(tiny_study(task={"entrypoint": "streamed:make"}, budget={"epochs": 2},
                                     train={"loader": {"num_workers": 0}}))
    prepared = prepare(spec)
    settings = TrialSettings(2, 64, 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # stacked == sequential to the bit holds on one thread
    try:
        stacked = train_trials_batched(prepared.task, prepared.data, [ADAM, MOMENTUM], settings)
        alone = [train_trial(prepared.task, prepared.data, c, settings) for c in (ADAM, MOMENTUM)]
    finally:
        torch.set_num_threads(threads)
    assert [o.implementation for o in stacked] == ["vmap+fused", "vmap+fused"]
    for s, a in zip(stacked, alone, strict=True):  # the same batches: the same validation losses, to the bit
        assert [e.metrics["val_loss"] for e in s.history] == [e.metrics["val_loss"] for e in a.history]
    found = lr_find(prepared, ["adam"], steps=20)["adam"]
    assert len(found.losses) > 5 and 1e-7 <= found.suggested_lr <= 10
