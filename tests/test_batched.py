"""``--batch-trials``: K trials trained as one stacked model equal K sequential trials (issue 8)."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
import torch
from conftest import tiny_study

from lrsearch.config.spec import spec_from_dict
from lrsearch.study.loop import run_study
from lrsearch.study.storage import create_study, open_storage
from lrsearch.training.batched import Stack, train_trials_batched
from lrsearch.training.batched_updates import make_updates
from lrsearch.training.data import TrainData
from lrsearch.training.prepared import prepare
from lrsearch.training.runner import train_trial
from lrsearch.training.tasks import Task, digits_mlp
from lrsearch.training.trial import TrialOutcome, TrialSettings

TOLERANCE = 1e-5
"""The issue's bar: per-epoch relative difference to the sequential trial (on CPU they are in fact bit-identical)."""
SETTINGS = TrialSettings(epochs=3, batch_size=64, seed=0)
State = optuna.trial.TrialState


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One torch thread: a sequential trial's result depends on the thread count (MKL splits a GEMM differently on
    two threads), the stacked one's does not (each member's GEMM runs on one thread); at one thread both agree."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> tuple[Any, TrainData]:
    task = digits_mlp()
    return task, TrainData.from_task(task, "cpu")


def config(optimizer: str, schedule: str | dict[str, Any] = "constant", **params: float) -> dict[str, Any]:
    return {"optimizer": optimizer, "params": params,
            "schedule": {"name": schedule} if isinstance(schedule, str) else schedule}


def assert_same_outcome(batched: TrialOutcome, sequential: TrialOutcome) -> None:
    """Same stop, same epochs, every metric within TOLERANCE, the same lr at every epoch."""
    assert (batched.stopped, batched.stopped_epoch) == (sequential.stopped, sequential.stopped_epoch)
    assert len(batched.history) == len(sequential.history)
    for ours, theirs in zip(batched.history, sequential.history, strict=True):
        assert ours.epoch == theirs.epoch and ours.lr == theirs.lr
        for name, value in theirs.metrics.items():
            assert abs(ours.metrics[name] - value) <= TOLERANCE * abs(value), (name, ours.epoch)


MIXED = {
    "adam": [config("adam", lr=3e-3), config("adam", lr=1e-3, beta1=0.8, beta2=0.99, eps=1e-6),
             config("adam", lr=5e-4, beta1=0.95, beta2=0.9999, weight_decay=1e-3), config("adam", lr=1e-2, eps=1e-4)],
    "adamw": [config("adamw", lr=3e-3, weight_decay=1e-2), config("adamw", lr=1e-3, beta1=0.7, weight_decay=0.1),
              config("adamw", lr=2e-3, beta2=0.99, eps=1e-7, weight_decay=0.0),
              config("adamw", lr=5e-3, beta1=0.9, beta2=0.995, weight_decay=1e-4)],
    "sgd": [config("momentum", lr=0.05, momentum=0.9), config("nesterov", lr=0.03, momentum=0.95, weight_decay=1e-4),
            config("sgd", lr=0.1), config("momentum", lr=0.01, momentum=0.5, weight_decay=1e-3)],
    "rmsprop": [config("rmsprop", lr=1e-3), config("rmsprop", lr=3e-4, alpha=0.9, eps=1e-6),
                config("rmsprop", lr=1e-4, alpha=0.999, weight_decay=1e-4), config("rmsprop", lr=2e-3, eps=1e-10)],
}


@pytest.mark.parametrize("family", sorted(MIXED))
def test_four_members_with_mixed_hyperparameters_equal_their_sequential_trials(digits, family: str) -> None:
    task, data = digits
    configs = MIXED[family]
    outcomes = train_trials_batched(task, data, configs, SETTINGS)
    for batched, member in zip(outcomes, configs, strict=True):
        assert batched.stopped is None and batched.implementation.startswith("vmap+")
        assert_same_outcome(batched, train_trial(task, data, member, SETTINGS))


def test_where_sequential_trials_use_foreach_the_stacked_math_equals_them(digits, monkeypatch) -> None:
    import lrsearch.training.optimizers

    # As on a device without fused kernels: sequential trials get foreach, stacked members the stacked math.
    monkeypatch.setattr(lrsearch.training.optimizers, "create_optimizer",
                        functools.partial(lrsearch.training.optimizers.create_optimizer, implementation="foreach"))
    task, data = digits
    configs = MIXED["adamw"][:2] + MIXED["sgd"][:2] + [config("adagrad", lr=0.05, weight_decay=1e-4)]
    outcomes = train_trials_batched(task, data, configs, SETTINGS)
    assert {o.implementation for o in outcomes} == {"vmap+stacked"}
    for batched, member in zip(outcomes, configs, strict=True):
        assert_same_outcome(batched, train_trial(task, data, member, SETTINGS))


def test_settings_the_stacked_rules_lack_train_with_a_torch_optimizer_per_member(digits) -> None:
    task, data = digits
    def exported(optimizer: str, **kwargs: Any) -> dict[str, Any]:  # the export form: torch kwargs as given
        return {"optimizer": optimizer, "kwargs": kwargs, "schedule": {"name": "constant"}}

    configs = [exported("adam", lr=1e-3, amsgrad=True), exported("rmsprop", lr=1e-3, centered=True, momentum=0.5),
               exported("adam", lr=1e38, amsgrad=True), exported("adam", lr=2e-3, amsgrad=True)]
    outcomes = train_trials_batched(task, data, configs, SETTINGS)
    assert [o.implementation for o in outcomes] == ["vmap+torch-fused", "vmap+torch-foreach"] + ["vmap+torch-fused"] * 2
    assert [o.stopped for o in outcomes] == [None, None, "diverged", None]  # the drop re-binds the last optimizer
    for batched, member in zip(outcomes, configs, strict=True):
        assert_same_outcome(batched, train_trial(task, data, member, SETTINGS))


def test_every_optimizer_in_one_stack_equals_sequential(digits) -> None:
    task, data = digits
    configs = [config("nadam", lr=2e-3, weight_decay=1e-4), config("adam", lr=1e-3), config("radam", lr=3e-3),
               config("adagrad", lr=0.05, weight_decay=1e-4), config("nesterov", lr=0.03, momentum=0.9)]
    outcomes = train_trials_batched(task, data, configs, TrialSettings(2, 64, 0))
    assert [o.implementation for o in outcomes] == ["vmap+stacked", "vmap+fused", "vmap+stacked", "vmap+fused",
                                                    "vmap+fused"]
    for batched, member in zip(outcomes, configs, strict=True):
        assert_same_outcome(batched, train_trial(task, data, member, TrialSettings(2, 64, 0)))


def test_a_diverging_member_is_dropped_and_the_others_still_equal_sequential(digits) -> None:
    task, data = digits
    # The diverging members sit mid-block (SGD, RMSprop): dropping them moves the rows and state after them.
    configs = [config("adam", lr=1e-3), config("momentum", lr=0.05, momentum=0.9), config("sgd", lr=1e4),
               config("nesterov", lr=0.03, momentum=0.9), config("rmsprop", lr=1e-3), config("rmsprop", lr=10.0),
               config("rmsprop", lr=3e-4, alpha=0.9)]
    outcomes = train_trials_batched(task, data, configs, SETTINGS)
    assert [o.stopped for o in outcomes] == [None, None, "diverged", None, None, "diverged", None]
    for batched, member in zip(outcomes, configs, strict=True):
        assert_same_outcome(batched, train_trial(task, data, member, SETTINGS))


def test_a_member_whose_weights_overflow_to_inf_and_nan_harms_no_other(digits) -> None:
    task, data = digits
    configs = [config("adam", lr=1e-3), config("adam", lr=1e38), config("adam", lr=3e-3)]
    outcomes = train_trials_batched(task, data, configs, SETTINGS)
    assert outcomes[1].diverged and outcomes[1].stopped_epoch == 0
    for batched, member in zip(outcomes, configs, strict=True):
        assert_same_outcome(batched, train_trial(task, data, member, SETTINGS))


def test_nan_weights_in_one_row_leave_the_other_rows_gradients_alone(digits) -> None:
    task, data = digits
    torch.manual_seed(0)
    model = task.model()
    trainable = list(model.named_parameters())

    def stack(k: int) -> Stack:
        return Stack(task, model, trainable, [object()] * k, [])  # type: ignore[list-item]

    clean, poisoned = stack(2), stack(3)
    poisoned.flat[1] = math.nan
    x, y = data.train_x[:64], data.train_y[:64]
    clean_losses, poisoned_losses = clean.gradients(x, y), poisoned.gradients(x, y)
    assert torch.isnan(poisoned.grad[1]).all() and math.isnan(poisoned_losses[1].item())
    assert torch.equal(poisoned.grad[[0, 2]], clean.grad)
    assert torch.equal(poisoned_losses[[0, 2]], clean_losses)


def test_a_member_pruned_at_epoch_1_stops_while_the_others_go_on(digits) -> None:
    task, data = digits
    settings = TrialSettings(4, 64, 0)
    configs = [config("adam", lr=1e-3), config("momentum", lr=0.05, momentum=0.9), config("rmsprop", lr=1e-3)]
    seen: list[list[int]] = [[], [], []]

    def hook(member: int):
        return lambda epoch: seen[member].append(epoch.epoch) or (member == 1 and epoch.epoch == 1)

    outcomes = train_trials_batched(task, data, configs, settings, [hook(i) for i in range(3)])
    assert seen == [[0, 1, 2, 3], [0, 1], [0, 1, 2, 3]]
    assert (outcomes[1].stopped, outcomes[1].stopped_epoch, len(outcomes[1].history)) == ("pruned", 1, 2)
    sequential = [train_trial(task, data, configs[0], settings),
                  train_trial(task, data, configs[1], settings, on_epoch=lambda e: e.epoch == 1),
                  train_trial(task, data, configs[2], settings)]
    for batched, theirs in zip(outcomes, sequential, strict=True):
        assert_same_outcome(batched, theirs)


def test_dropout_draws_the_masks_sequential_trials_draw(digits) -> None:
    task, data = digits

    def model() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                   torch.nn.Linear(64, 10))

    dropout = Task(model, task.train, task.val, task.loss, task.metrics)
    configs = [config("adam", lr=1e-3), config("momentum", lr=0.05, momentum=0.9)]
    outcomes = train_trials_batched(dropout, data, configs, SETTINGS)
    for batched, member in zip(outcomes, configs, strict=True):
        assert_same_outcome(batched, train_trial(dropout, data, member, SETTINGS))


def test_each_member_follows_its_own_schedule_as_sequential(digits) -> None:
    task, data = digits
    configs = [config("adam", "cosine", lr=3e-3), config("adam", {"name": "warmup_cosine", "warmup_fraction": 0.2},
                                                         lr=3e-3),
               config("adam", lr=3e-3), config("momentum", "linear", lr=0.05, momentum=0.9),
               config("adam", {"name": "warmup_cosine", "warmup_fraction": 0.05}, lr=1e-3)]
    outcomes = train_trials_batched(task, data, configs, SETTINGS)
    lrs = [[e.lr for e in o.history] for o in outcomes]
    assert lrs[0] != lrs[1] and lrs[1] != lrs[2] and lrs[0] != lrs[2] and lrs[2] == [3e-3] * 3
    for batched, member in zip(outcomes, configs, strict=True):
        assert_same_outcome(batched, train_trial(task, data, member, SETTINGS))


@pytest.mark.parametrize("torch_class, kwargs", [
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}),
    ("SGD", {"lr": 0.1, "momentum": 0.0}),
    ("Adam", {"lr": 1e-3, "betas": (0.8, 0.99), "weight_decay": 1e-4}),
    ("AdamW", {"lr": 1e-3, "eps": 1e-6, "weight_decay": 1e-2}),
    ("RMSprop", {"lr": 1e-3, "alpha": 0.95, "eps": 1e-6, "weight_decay": 1e-5}),
    ("NAdam", {"lr": 2e-3, "weight_decay": 1e-4}),
    ("RAdam", {"lr": 3e-3, "betas": (0.85, 0.995)}),
    ("Adagrad", {"lr": 0.05, "weight_decay": 1e-4}),
])
def test_stacked_updates_are_torch_foreach_bit_for_bit(torch_class: str, kwargs: dict[str, Any]) -> None:
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(300, generator=generator)
    reference = start.clone()
    optimizer = getattr(torch.optim, torch_class)([reference], foreach=True, **kwargs)
    other = {**kwargs, "lr": kwargs["lr"] * 3, "weight_decay": 0.0}  # a different member beside it
    params, grads = start.repeat(2, 1), torch.zeros(2, 300)
    update = make_updates("stacked", torch_class, [kwargs, other])
    update.bind(params)
    for _ in range(25):
        grad = torch.randn(300, generator=generator)
        reference.grad = grad.clone()
        optimizer.step()
        grads.copy_(grad.expand(2, -1))
        update.step(grads, [kwargs["lr"], other["lr"]])
        assert torch.equal(params[0], reference)


def test_stacked_trials_keep_the_budget_and_are_recorded_as_sequential_ones(tmp_path) -> None:
    spec = spec_from_dict(tiny_study(budget={"n_trials": 5, "epochs": 2}, sampler={"name": "random", "seed": 0},
                                     search={"optimizers": ["adam", "momentum", "sgd"]}, train={"batch_trials": 2}))
    prepared = prepare(spec)
    storage = open_storage(f"sqlite:///{tmp_path / 'batched.db'}")
    study = create_study(spec, storage, "tiny")
    run_study(study, storage, prepared)
    trials = study.get_trials()
    assert [t.state for t in trials].count(State.COMPLETE) + [t.state for t in trials].count(State.PRUNED) == 5
    assert len(trials) == 5 and [t.user_attrs["batch"] for t in trials] == [[0, 1], [0, 1], [2, 3], [2, 3], [4]]
    for trial in trials:
        attrs = trial.user_attrs
        alone = attrs["batch"] == [trial.number]  # a batch of one trains as a sequential trial: the same, faster
        assert attrs["optimizer_impl"].startswith("vmap+") is not alone
        assert attrs["diverged"] is (trial.state == State.PRUNED)
        assert attrs["training"] == {"batch_size": 64, "epochs": 2, "world_size": 1, "seed": 0, "device": "cpu",
                                     "threads": 1, "precision": "fp32", "data": "tensors", "steps_per_epoch": 23}
        sequential = train_trial(prepared.task, prepared.data, attrs["config"], TrialSettings(2, 64, 0))
        if trial.state == State.COMPLETE:
            assert trial.value == pytest.approx(sequential.final["val_loss"], rel=TOLERANCE)
            assert sorted(trial.intermediate_values) == [0, 1]
    run_study(study, storage, prepared)  # the budget is spent: nothing more runs
    assert len(study.get_trials()) == 5


def test_tune_with_batch_trials_runs_the_budget_stacked(storage: str) -> None:
    from lrsearch.study.tune import tune

    study = tune(tiny_study(budget={"n_trials": 4, "epochs": 2}, train={"threads": 1}), storage=storage,
                 batch_trials=2)
    assert [t.state for t in study.trials] == [State.COMPLETE] * 4
    assert all(t.user_attrs["optimizer_impl"].startswith("vmap+") for t in study.trials)
    assert tune(tiny_study(budget={"n_trials": 4, "epochs": 2}), storage=storage, batch_trials=4).trials == \
        study.trials  # resumed: the budget is spent, nothing more runs


def test_batch_trials_refuses_several_ranks_and_training_functions(storage: str) -> None:
    from lrsearch.errors import SpecError
    from lrsearch.study.tune import tune

    with pytest.raises(SpecError, match="nproc_per_trial 2"):
        tune(tiny_study(), storage=storage, batch_trials=2, nproc_per_trial=2)
    with pytest.raises(SpecError, match=r"task\.function"):
        spec_from_dict(tiny_study(task={"function": "train:main"}, train={"batch_trials": 2}))
